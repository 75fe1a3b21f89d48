"""GBPO vs TRL's GRPO on the same work: generated tokens/s, seconds per step, peak memory and the GBPO/GRPO ratio.

A random-weight model built from a config (no hub, no weights to carry): by default the Qwen2.5-Math-1.5B
architecture, whose random weights rarely stop early, so completions run to the length limit -- a fixed, worst-case
workload. Transformers generation on one device (GPU when present), groups of --num-generations.

    python benchmarks/gbpo_vs_grpo.py                         # GPU: Qwen2.5-Math-1.5B shape, groups of 32
    python benchmarks/gbpo_vs_grpo.py --tiny --steps 2        # CPU check of the script itself
    python benchmarks/gbpo_vs_grpo.py --model smollm2-135m --num-generations 8 --max-completion-length 64  # CPU

Each kind runs in its own Python process: `main()` starts this script twice, with `--only gbpo` and then
`--only grpo`, and reads the JSON each one writes. So each peak GPU memory is that kind's alone (in one process,
GRPO's peak included GBPO's model and optimizer, still alive). `--only KIND` runs one kind in this process.

launch/gpu_acceptance.sh (and launch/gpu_smoke.sh, this benchmark alone) runs it on a GPU machine. Results go in
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config
from trl import GRPOConfig, GRPOTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny import make_tokenizer  # noqa: E402  (a character-level tokenizer with a chat template, built in code)

from gbpo import GBPOConfig, GBPOTrainer  # noqa: E402
from gbpo.models import resolve_model  # noqa: E402

# Qwen2.5-Math-1.5B's config.json, written out (the weights are random).
QWEN25_MATH_15B = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)


def digit_share_reward(completions, **kwargs):
    """A reward that varies within each group (share of digits), so every group has non-zero advantages."""
    return [sum(ch.isdigit() for ch in c[0]["content"]) / max(len(c[0]["content"]), 1) for c in completions]


def run(kind: str, args) -> dict:
    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if args.model:  # a real model (e.g. the CPU default smollm2-135m)
        path = resolve_model(args.model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        tokenizer = make_tokenizer()
        shape = TINY if args.tiny else QWEN25_MATH_15B
        config = Qwen2Config(**shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    config_cls, trainer_cls = (GBPOConfig, GBPOTrainer) if kind == "gbpo" else (GRPOConfig, GRPOTrainer)
    extra = {"loss_type": "gbpo"} if kind == "gbpo" else {"loss_type": "dapo", "epsilon": 0.3}
    training_args = config_cls(
        output_dir=f"/tmp/gbpo_bench_{kind}",
        per_device_train_batch_size=args.num_generations,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        max_steps=args.steps,
        num_iterations=args.num_iterations,
        learning_rate=1e-6,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=torch.cuda.is_available(),
        seed=0,
        **extra,
    )
    prompts = [{"prompt": [{"role": "user", "content": f"Problem {i}: what is {i} + {i}?"}]} for i in range(64)]
    trainer = trainer_cls(
        model=model,
        reward_funcs=digit_share_reward,
        args=training_args,
        train_dataset=Dataset.from_list(prompts),
        processing_class=tokenizer,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    steps = [e for e in trainer.state.log_history if "step_time" in e]
    tokens = sum(e["completions/mean_length"] * args.num_generations for e in steps if "completions/mean_length" in e)
    # the first step includes warm-up (kernels, allocator); report the rest when there is more than one
    timed = steps[1:] if len(steps) > 1 else steps
    return {
        "kind": kind,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
        "seconds_per_step": sum(e["step_time"] for e in timed) / len(timed),
        "wall_seconds": wall,
        "generated_tokens_per_second": tokens / wall,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


KINDS = ("gbpo", "grpo")


def run_in_subprocess(kind: str, args) -> dict:
    """``run(kind, args)`` in a fresh Python process (this script with ``--only kind``): its peak GPU memory is its
    own. Raises ``subprocess.CalledProcessError`` when that process fails (its output is on the terminal)."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / f"{kind}.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--only",
            kind,
            "--steps",
            str(args.steps),
            "--num-generations",
            str(args.num_generations),
            "--max-completion-length",
            str(args.max_completion_length),
            "--num-iterations",
            str(args.num_iterations),
            "--output",
            str(output),
        ]
        if args.tiny:
            command.append("--tiny")
        if args.model:
            command += ["--model", args.model]
        subprocess.run(command, check=True)
        return json.loads(output.read_text())


def print_result(r: dict) -> None:
    mem = f"{r['peak_gpu_memory_gib']:.1f} GiB" if r["peak_gpu_memory_gib"] is not None else "n/a"
    print(
        f"{r['kind']}: {r['seconds_per_step']:.2f} s/step, {r['generated_tokens_per_second']:.0f} generated "
        f"tokens/s, peak GPU memory {mem}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model: checks the script on CPU")
    parser.add_argument("--model", default=None, help="a real model instead (path, hub id or smollm2-135m)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--num-generations", type=int, default=32)
    parser.add_argument("--max-completion-length", type=int, default=1024)
    parser.add_argument("--num-iterations", type=int, default=1)
    parser.add_argument(
        "--only",
        choices=KINDS,
        default=None,
        help="run this kind alone, in this process, and write its result (one JSON object) to --output; without "
        "it, each kind runs in its own process and --output gets both and their ratio",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.only:
        result = run(args.only, args)
        print_result(result)
        if args.output:
            args.output.write_text(json.dumps(result, indent=2))
        return
    results = [run_in_subprocess(kind, args) for kind in KINDS]  # GBPO's process has ended before GRPO's starts
    ratio = results[0]["seconds_per_step"] / results[1]["seconds_per_step"]
    print(f"device: {results[0]['device']}")
    for r in results:
        print_result(r)
    print(f"GBPO/GRPO step-time ratio: {ratio:.3f}")
    if args.output:
        summary = {"device": results[0]["device"], "results": results, "ratio": ratio}
        args.output.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
