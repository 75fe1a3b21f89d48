"""A recipe as `gbpo.train` reads it: its keys, TRL's parser over them, and the keys as the user wrote them.

A recipe is a YAML mapping of keys of :class:`GBPOScriptArguments` (data and rewards), :class:`gbpo.GBPOConfig` (every
TRL ``GRPOConfig`` key and GBPO's) and TRL's ``ModelConfig`` (model, dtype, LoRA); ``--key value`` on the command line
overrides the recipe. `gbpo.train` (the run), `gbpo.layout` (the batch layout and the memory plan, which build no
model) and the benchmarks read recipes through this module, so none of them imports another's command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import ModelConfig, TrlParser

from .config import GBPOConfig
from .data import INSTRUCTION

__all__ = ["REWARDS", "GBPOScriptArguments", "argv_with_config", "command_line_keys", "make_parser", "user_keys"]

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
        answer_extraction: ``strict`` (the last ``\\boxed{}``) or ``lenient`` (also unboxed answers); see
            `gbpo.grading.extract_answer`.
        vllm_optional: with ``use_vllm: true``, fall back to transformers generation when vLLM is not installed.
        overwrite_output_dir: start afresh in an ``output_dir`` that holds an earlier run, deleting its
            checkpoints, metrics and model files first (without it, such a directory is an error unless resuming).
        prompts_per_step: prompts whose completions make one optimizer step, whatever the number of processes:
            `per_device_train_batch_size` (at most the recipe's value), `gradient_accumulation_steps` and
            `steps_per_generation` are derived for the processes of the run (`gbpo.layout.plan_layout`; a changed key
            is announced in one line). Unset: the batch keys are taken as written, per process.
        prompts_per_generation: prompts generated at once (with ``prompts_per_step``); unset: ``prompts_per_step``
            x the recipe's optimizer steps per generation (``steps_per_generation / gradient_accumulation_steps``).
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
    answer_extraction: str = field(
        default="strict",
        metadata={
            "help": "How the rewards read a completion's answer: strict (the last \\boxed{}) or lenient (also the "
            "answer after 'final answer is', the last math, the last number).",
            "choices": ["strict", "lenient"],
        },
    )
    vllm_optional: bool = field(
        default=False,
        metadata={
            "help": "With use_vllm: true, generate with transformers instead of failing when vLLM is not installed "
            "(said in one log line). The CPU default sets it; the GPU recipes do not."
        },
    )
    prompts_per_step: int | None = field(
        default=None,
        metadata={
            "help": "Prompts per optimizer step on any number of processes: per_device_train_batch_size (at most the "
            "recipe's), gradient_accumulation_steps and steps_per_generation are derived (gbpo.layout), and a "
            "changed key is said in one line. Unset: the batch keys are taken as written, per process."
        },
    )
    prompts_per_generation: int | None = field(
        default=None,
        metadata={
            "help": "Prompts generated at once, with prompts_per_step (a multiple of it). Unset: prompts_per_step x "
            "steps_per_generation / gradient_accumulation_steps as written."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an output_dir that holds an earlier run: delete its checkpoints, metrics and "
            "model files first. Without it such an output_dir is an error unless resume_from_checkpoint is set."
        },
    )


def make_parser() -> TrlParser:
    """TRL's parser over the three dataclasses of a recipe; abbreviated keys (``--max_step``) are not accepted."""
    parser = TrlParser((GBPOScriptArguments, GBPOConfig, ModelConfig))
    parser.allow_abbrev = False  # argparse would otherwise read --max_step as --max_steps
    return parser


def argv_with_config(argv: list[str]) -> list[str]:
    """Accept the recipe as the first positional argument (``gbpo.train RECIPE.yaml``) as well as ``--config``.

    Raises:
        FileNotFoundError: the recipe file does not exist.
        ValueError: no recipe and no ``--model_name_or_path`` (the defaults alone do not make a run).
    """
    if argv and not argv[0].startswith("-"):
        argv = ["--config", argv[0], *argv[1:]]
    if "--config" in argv:
        recipe = Path(argv[argv.index("--config") + 1])
        if not recipe.is_file():
            raise FileNotFoundError(f"Recipe {recipe} does not exist.")
    elif "--model_name_or_path" not in argv:
        recipes = Path(__file__).resolve().parent.parent / "recipes"
        shipped = ", ".join(sorted(p.name for p in recipes.glob("*.yaml"))) if recipes.is_dir() else ""
        raise ValueError(
            "No recipe: run `python -m gbpo.train RECIPE.yaml [--key value ...]`"
            + (f" (recipes/ has {shipped})." if shipped else ".")
        )
    return argv


def user_keys(argv: list[str]) -> dict:
    """The keys the user wrote, recipe then command line (values as written), for error messages and the card."""
    keys = {}
    if "--config" in argv:
        keys.update(yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text()) or {})
    keys.update(command_line_keys(argv))
    return keys


def command_line_keys(argv: list[str]) -> dict:
    """The keys set on the command line (``--key value`` or ``--key=value``, values read as YAML), not the recipe's."""
    keys = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--") and arg != "--config":
            key, _, value = arg[2:].partition("=")
            if not value:
                value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "true"
            try:
                keys[key] = yaml.safe_load(value)  # "1" -> 1, "true" -> True, as in a recipe
            except yaml.YAMLError:
                keys[key] = value
    return keys
