"""vLLM for CPU against transformers' `generate`, on the CPU default (SmolLM2-135M-Instruct, arithmetic prompts).

    python benchmarks/vllm_cpu.py generation [--prompts 8] [--samples 8] [--dtype float32]
    python benchmarks/vllm_cpu.py training [--max-steps 16] [--runs old,vllm]

`generation`: the same prompts, the same batch (prompts x samples sequences at once), the same sampling
(T 0.7, 48 new tokens, no early stop so both make the same number of tokens), in one process: transformers, then
vLLM, each after a warm-up call, repeated twice; prints tokens/s of each and the ratio.

`training`: `python -m gbpo.train recipes/smollm2_cpu.yaml --max_steps N` as subprocesses, one after the other,
in these settings:
  old   : the recipe before vLLM: transformers generation, 2 prompts per generation (per_device 8, accumulation 2)
  tf    : today's recipe layout (8 prompts per generation) with transformers generation
  vllm  : today's recipe: vLLM (fp32) colocated, 8 prompts per generation
  bf16  : today's recipe with vLLM generating in bf16 (TRL's importance-sampling correction on)
and prints wall time, trained completions per minute (distinct completions that entered the loss) and the mean
reward / label accuracy / gold accuracy of the run's generation batches, each against `old`.
Run on an otherwise idle machine: the figures are ratios measured side by side in one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "smollm2_cpu.yaml"

TRAINING_RUNS = {
    "old": [
        "--use_vllm", "false", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2",
        "--steps_per_generation", "2",
    ],
    "tf": ["--use_vllm", "false"],
    "vllm": [],
    "bf16": ["--vllm_dtype", "bfloat16"],
}  # fmt: skip


def generation(args) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    from gbpo.data import load_benchmark
    from gbpo.kv_cache import cpu_kv_cache_options, longest_prompt_tokens
    from gbpo.models import resolve_model

    path = resolve_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    rows = load_benchmark("arithmetic", limit=args.prompts, instruction="Put the final answer in \\boxed{}.")
    prompts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    n, new_tokens = args.samples, 48

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype))
    batch = tokenizer([p for p in prompts for _ in range(n)], return_tensors="pt", padding=True)

    def transformers_tok_s() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **batch, do_sample=True, temperature=0.7, top_p=1.0, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        return (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0] / (time.perf_counter() - start)

    sequences = len(prompts) * n
    kv_cache, line = cpu_kv_cache_options(
        AutoConfig.from_pretrained(path),
        dtype=args.dtype,
        max_num_seqs=sequences,
        max_seq_len=longest_prompt_tokens(prompts, tokenizer) + new_tokens,
    )
    print(line, flush=True)
    llm = LLM(
        model=str(path),
        dtype=args.dtype,
        enforce_eager=True,
        seed=0,
        max_num_batched_tokens=4096,
        max_num_seqs=sequences,
        **kv_cache,
    )
    params = SamplingParams(n=n, temperature=0.7, max_tokens=new_tokens, ignore_eos=True)

    def vllm_tok_s() -> float:
        start = time.perf_counter()
        out = llm.generate(prompts, params, use_tqdm=False)
        return sum(len(c.token_ids) for r in out for c in r.outputs) / (time.perf_counter() - start)

    transformers_tok_s(), vllm_tok_s()  # warm-up
    for repeat in range(2):
        hf, vl = transformers_tok_s(), vllm_tok_s()
        print(
            f"[{repeat}] {len(prompts)} prompts x {n} samples = {len(prompts) * n} sequences, {args.dtype}: "
            f"transformers {hf:.1f} tok/s, vLLM {vl:.1f} tok/s, ratio {vl / hf:.2f}x",
            flush=True,
        )


# Every setting trains 16 completions (2 prompts) per optimizer step, each completion in 2 steps (num_iterations).
COMPLETIONS_PER_STEP, NUM_ITERATIONS = 16, 2


def run_summary(out: Path, seconds: float) -> dict:
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [h for h in history if "loss" in h and "step_time" in h]
    generations = [h for h in steps if "ttrl/majority_ratio" in h]
    trained = len(steps) * COMPLETIONS_PER_STEP / NUM_ITERATIONS  # distinct completions that entered the loss

    def mean(key):
        values = [g[key] for g in generations if key in g]
        return sum(values) / len(values) if values else float("nan")

    return {
        "seconds": seconds,
        "steps": len(steps),
        "completions_per_minute": trained / seconds * 60,
        "reward": mean("reward"),
        "label_accuracy": mean("ttrl/label_accuracy"),
        "gold_reward": mean("ttrl/gold_reward"),
    }


def training(args) -> None:
    results = {}
    for name in args.runs.split(","):
        out = Path(args.output_dir) / name
        command = [
            sys.executable, "-m", "gbpo.train", str(RECIPE), "--max_steps", str(args.max_steps),
            "--output_dir", str(out), "--overwrite_output_dir", "true", "--save_strategy", "no", *TRAINING_RUNS[name],
        ]  # fmt: skip
        print("$", " ".join(command), flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        results[name] = run_summary(out, time.perf_counter() - start)
        print(name, json.dumps(results[name]), flush=True)
    base = results.get("old")
    print("\n| run | wall s | trained completions/min | vs old | reward | label acc | gold acc |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ratio = r["completions_per_minute"] / base["completions_per_minute"] if base else float("nan")
        print(
            f"| {name} | {r['seconds']:.0f} | {r['completions_per_minute']:.1f} | {ratio:.2f}x | {r['reward']:.3f} "
            f"| {r['label_accuracy']:.3f} | {r['gold_reward']:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    gen = sub.add_parser("generation")
    gen.add_argument("--prompts", type=int, default=8)
    gen.add_argument("--samples", type=int, default=8)
    gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    train = sub.add_parser("training")
    train.add_argument("--max-steps", type=int, default=16)
    train.add_argument("--runs", default="old,vllm")
    train.add_argument("--output-dir", default="outputs/bench_vllm_cpu")
    args = parser.parse_args()
    generation(args) if args.what == "generation" else training(args)


if __name__ == "__main__":
    main()
