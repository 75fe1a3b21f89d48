"""`python -m gbpo.train RECIPE.yaml [--key value ...]`: GBPO (or any TRL loss) on a benchmark, end to end.

Also ``accelerate launch [accelerate options] -m gbpo.train RECIPE.yaml``. A recipe is a YAML mapping of keys of
:class:`GBPOScriptArguments` (data and rewards), :class:`gbpo.GBPOConfig` (every TRL ``GRPOConfig`` key and GBPO's)
and TRL's ``ModelConfig`` (model, dtype, LoRA); parsing is TRL's own ``TrlParser``, so an unknown key is an error that
names it, and ``--key value`` on the command line overrides the recipe. The run trains, saves the model (or adapter)
to ``output_dir`` and writes the metrics it logged to ``output_dir/metrics.jsonl``.

On SIGTERM (preemption) it saves a checkpoint at the end of the current step and exits with status 143;
``--resume_from_checkpoint true`` continues from the newest complete checkpoint in ``output_dir``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, TrlParser, get_peft_config

from .config import GBPOConfig
from .data import INSTRUCTION

__all__ = ["GBPOScriptArguments", "build_reward_funcs", "main", "make_parser"]

REWARDS = ("majority_vote", "accuracy")


@dataclass
class GBPOScriptArguments:
    """Data and reward keys of a recipe (the rest are `GBPOConfig` and TRL `ModelConfig` keys).

    Parameters:
        dataset_name: a benchmark of `gbpo.data` (``aime24``, ``amc``, ``math500``, ``arithmetic``) or a local
            JSON/JSONL/parquet file with ``problem`` and ``answer`` columns.
        dataset_levels: MATH-500 levels to keep (e.g. ``[1, 2]``); all when unset.
        dataset_limit: keep the first N problems.
        system_prompt: an optional system message before each problem.
        instruction: the line after each problem (default: the standard step-by-step ``\\boxed{}`` instruction).
        reward_funcs: ``majority_vote`` (TTRL: no labels) and/or ``accuracy`` (against the gold ``answer``).
        eval_benchmarks: benchmarks evaluated every ``eval_steps`` during training (needs ``eval_steps``).
        eval_limit: evaluate only the first N problems of each.
        answer_fallback_last_number: a completion with no ``\\boxed{}`` answers with its last number.
    """

    dataset_name: str = field(
        default="arithmetic",
        metadata={"help": "Benchmark name (aime24, amc, math500, arithmetic) or a local json/jsonl/parquet file."},
    )
    dataset_levels: list[int] | None = field(default=None, metadata={"help": "MATH-500 levels to keep."})
    dataset_limit: int | None = field(default=None, metadata={"help": "Keep only the first N problems."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    instruction: str = field(
        default=INSTRUCTION,
        metadata={"help": "The line after each problem; default: the standard step-by-step \\boxed{} instruction."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["majority_vote"],
        metadata={"help": f"Reward functions, any of {REWARDS}: majority_vote is TTRL (no labels)."},
    )
    eval_benchmarks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Benchmarks (names or files) evaluated every eval_steps (set eval_steps: N): logs "
            "eval/<name>/pass@1 and maj@k. Same prompt template as training."
        },
    )
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N problems of each."})
    answer_fallback_last_number: bool = field(
        default=False,
        metadata={"help": "Use a completion's last number as its answer when it has no \\boxed{}."},
    )


def make_parser() -> TrlParser:
    """TRL's parser over the three dataclasses of a recipe."""
    return TrlParser((GBPOScriptArguments, GBPOConfig, ModelConfig))


def build_reward_funcs(script_args: GBPOScriptArguments, training_args: GBPOConfig) -> list:
    """The reward callables named by ``script_args.reward_funcs``.

    Raises:
        ValueError: an unknown reward name (the message lists the known ones) or an empty list.
    """
    from .rewards import AccuracyReward, MajorityVoteReward

    if not script_args.reward_funcs:
        raise ValueError(f"reward_funcs is empty: name at least one of {REWARDS}.")
    funcs = []
    for name in script_args.reward_funcs:
        if name == "majority_vote":
            funcs.append(MajorityVoteReward(training_args.num_generations, script_args.answer_fallback_last_number))
        elif name == "accuracy":
            funcs.append(AccuracyReward(script_args.answer_fallback_last_number))
        else:
            raise ValueError(f"Unknown reward in reward_funcs: {name!r}. Known rewards: {REWARDS}.")
    return funcs


def _argv_with_config(argv: list[str]) -> list[str]:
    """Accept the recipe as the first positional argument (``gbpo.train RECIPE.yaml``) as well as ``--config``."""
    if argv and not argv[0].startswith("-"):
        return ["--config", argv[0], *argv[1:]]
    return argv


def main(argv: list[str] | None = None):
    """Parse a recipe and overrides, train, save the model and the logged metrics; returns the trainer."""
    from transformers import AutoTokenizer

    from .checkpoints import PreemptionCallback, resolve_resume
    from .data import load_benchmark
    from .evaluation.callback import BenchmarkEvalCallback
    from .models import resolve_model
    from .trainer import GBPOTrainer

    argv = _argv_with_config(list(sys.argv[1:] if argv is None else argv))
    script_args, training_args, model_args = make_parser().parse_args_and_config(args=argv)
    if model_args.model_name_or_path is None:
        raise ValueError("model_name_or_path is not set: name a model in the recipe (e.g. smollm2-135m).")

    model_path = resolve_model(model_args.model_name_or_path)
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    dataset = load_benchmark(
        script_args.dataset_name,
        levels=script_args.dataset_levels,
        limit=script_args.dataset_limit,
        system_prompt=script_args.system_prompt,
        instruction=script_args.instruction,
    )
    eval_benchmarks = None
    if script_args.eval_benchmarks:
        if training_args.eval_steps is None:
            raise ValueError(
                "eval_benchmarks is set but eval_steps is not: set eval_steps: N to evaluate every N steps."
            )
        eval_benchmarks = {
            Path(name).stem: load_benchmark(
                name,
                limit=script_args.eval_limit,
                system_prompt=script_args.system_prompt,
                instruction=script_args.instruction,
            )
            for name in script_args.eval_benchmarks
        }
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=training_args.trust_remote_code)
    trainer = GBPOTrainer(
        model=model_path,
        reward_funcs=build_reward_funcs(script_args, training_args),
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    if eval_benchmarks:
        trainer.add_callback(BenchmarkEvalCallback(trainer, eval_benchmarks))
    preemption = PreemptionCallback()
    trainer.add_callback(preemption)
    with trainer.accelerator.main_process_first():  # the main process moves cut-off checkpoints aside first
        resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    trainer.train(resume_from_checkpoint=resume)
    trainer.preempted = preemption.preempted
    if not trainer.preempted:
        trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        metrics_path = Path(training_args.output_dir) / "metrics.jsonl"
        with metrics_path.open("w") as f:
            for entry in trainer.state.log_history:
                f.write(json.dumps(entry) + "\n")
        if trainer.preempted:
            trainer.accelerator.print(
                f"Preempted at step {trainer.state.global_step}: checkpoint saved in {training_args.output_dir}; "
                "continue with --resume_from_checkpoint true."
            )
        else:
            trainer.accelerator.print(f"Model saved to {training_args.output_dir}; metrics in {metrics_path}.")
    return trainer


if __name__ == "__main__":
    if main().preempted:
        sys.exit(143)  # 128 + SIGTERM: the run did not finish, its checkpoint is saved
