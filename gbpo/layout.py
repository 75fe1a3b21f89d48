"""The batch layout of a recipe on a given number of processes, kept at the recipe's prompts per optimizer step.

TRL's `GRPOConfig` counts its batch per process: every process generates ``per_device_train_batch_size *
steps_per_generation`` completions per generation batch, ``num_generations`` per prompt, and one optimizer step takes
``gradient_accumulation_steps`` micro-batches of ``per_device_train_batch_size`` rows on every process. A recipe
written for 4 GPUs therefore trains on 4 times as many prompts per optimizer step on 16 GPUs, and generates 4 times
as many prompts at once (more than AIME's 30 problems for the paper's recipe). The paper's settings are counted in
prompts, whatever the hardware (arXiv 2604.18578, appendix A.9: 8 prompts per generation and mini-batches of 2 prompts
on AIME and AMC, 32 and 1 on MATH-500), so a recipe may state them:

- ``prompts_per_step``: prompts whose completions make one optimizer step (the reference's mini-batch);
- ``prompts_per_generation``: prompts generated at once; unset, ``prompts_per_step * steps_per_generation /
  gradient_accumulation_steps`` as written (the recipe's optimizer steps per generation batch are kept).

:func:`plan_layout` then derives, for ``W`` processes, the three TRL keys that give them:

- completions per optimizer step ``C = prompts_per_step * num_generations``, ``C / W`` per process (must be whole);
- ``per_device_train_batch_size``: the largest divisor of ``C / W`` that is at most the recipe's value (its memory
  budget per micro-batch) and, with vote-N/train-M or ``drop_uninformative_groups``, a multiple of
  ``N / gcd(N, M)`` so that every micro-batch trains whole rows (``gbpo.rows``; GBPOConfig's rule);
- ``gradient_accumulation_steps = C / W / per_device_train_batch_size``;
- ``steps_per_generation = gradient_accumulation_steps * prompts_per_generation / prompts_per_step``.

So the generation batch always holds whole groups (TRL's rule), every process trains the same number of rows, and a
group may span processes (GBPO computes rewards, votes and target ratios on the batch gathered from every process).

Nothing is rewritten silently: a key the layout changes is announced in one line (:meth:`Layout.change_line`), a key
set on the command line is never changed (a layout that would need another value is an error naming it), and a
combination that cannot hold is a ``ValueError`` naming the key to change and how. A recipe without
``prompts_per_step`` is taken as written (TRL's behaviour) and only checked.

``python -m gbpo.layout RECIPE.yaml --num_processes N [--key value ...]`` prints the layout, or the error, without
building a model or touching a GPU (the SLURM script runs it before it starts anything); with ``--gpu-memory-gib M``
it also prints the memory plan per GPU of `gbpo.memory_plan` and says which key to lower when it does not fit.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LAYOUT_KEYS", "Layout", "layout_keys", "main", "plan_layout"]

# The keys plan_layout reads; the first three are the ones it may change.
LAYOUT_KEYS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "steps_per_generation",
    "generation_batch_size",
    "num_generations",
    "num_train_generations",
    "drop_uninformative_groups",
    "prompts_per_step",
    "prompts_per_generation",
)


@dataclass(frozen=True)
class Layout:
    """One batch layout. Counts are rows (completions) or prompts; "step" is an optimizer step.

    Attributes:
        num_processes: ``W``, training processes.
        num_generations: ``N``, completions per prompt (all vote).
        num_train_generations: ``M``, completions per prompt trained on (``N`` without vote-N/train-M).
        per_device_train_batch_size: generated rows per process per micro-batch (``M / N`` of them trained).
        gradient_accumulation_steps: micro-batches per optimizer step.
        steps_per_generation: micro-batches per generation batch (TRL's key).
        changes: ``key -> (value as written, value as run)`` for every key the layout changed; ``None`` as written
            means unset.
    """

    num_processes: int
    num_generations: int
    num_train_generations: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    changes: dict[str, tuple[int | None, int]] = field(default_factory=dict)

    @property
    def completions_per_generation(self) -> int:
        """Completions generated at once, all processes (TRL's ``generation_batch_size``)."""
        return self.per_device_train_batch_size * self.num_processes * self.steps_per_generation

    @property
    def prompts_per_generation(self) -> float:
        return self.completions_per_generation / self.num_generations

    @property
    def completions_per_step(self) -> int:
        """Generated rows (voting completions) of one optimizer step, all processes."""
        return self.per_device_train_batch_size * self.num_processes * self.gradient_accumulation_steps

    @property
    def prompts_per_step(self) -> float:
        return self.completions_per_step / self.num_generations

    @property
    def trained_rows_per_process(self) -> float:
        """Rows one process trains on per micro-batch (``per_device_train_batch_size * M / N``)."""
        return self.per_device_train_batch_size * self.num_train_generations / self.num_generations

    @property
    def optimizer_steps_per_generation(self) -> float:
        """Optimizer steps per pass over a generation batch (times ``num_iterations`` per generation)."""
        return self.steps_per_generation / self.gradient_accumulation_steps

    def overrides(self) -> list[str]:
        """The changed keys as command-line overrides, ``["--key", "value", ...]``."""
        return [arg for key, (_, new) in self.changes.items() for arg in (f"--{key}", str(new))]

    def summary(self) -> str:
        """What one optimizer step and one generation batch hold, in one line."""
        return (
            f"{self.num_processes} process(es): {self.prompts_per_step:g} prompts x {self.num_generations} = "
            f"{self.completions_per_step} completions per optimizer step ({self.per_device_train_batch_size} per "
            f"process x {self.gradient_accumulation_steps} micro-batch(es), {self.trained_rows_per_process:g} trained "
            f"per process and micro-batch); {self.prompts_per_generation:g} prompts = "
            f"{self.completions_per_generation} completions per generation "
            f"({self.optimizer_steps_per_generation:g} optimizer steps per pass)"
        )

    def change_line(self) -> str:
        """The one line that announces the changed keys (empty when nothing changed)."""
        if not self.changes:
            return ""
        changed = ", ".join(
            f"{key} {'unset' if old is None else old} -> {new}" for key, (old, new) in self.changes.items()
        )
        return f"batch layout for {self.summary()}: {changed}."


def _value(keys: Mapping[str, Any], key: str, default=None):
    value = keys.get(key, default)
    return default if value is None else value


def _positive(keys: Mapping[str, Any], key: str) -> int | None:
    value = keys.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{key} must be a whole number >= 1, got {value!r}.")
    return value


def plan_layout(
    keys: Mapping[str, Any],
    num_processes: int,
    *,
    fixed: Collection[str] = (),
    num_prompts: int | None = None,
) -> Layout:
    """The batch layout of ``keys`` on ``num_processes`` processes (module docstring for the rules and why).

    Args:
        keys: the recipe's keys (all of :data:`LAYOUT_KEYS`; :func:`layout_keys` fills in the defaults), as written:
            ``steps_per_generation`` ``None`` means unset.
        num_processes: training processes (``accelerate.PartialState().num_processes``).
        fixed: keys set on the command line; they are never changed.
        num_prompts: problems in the data set, when known: one generation batch must fit in it.

    Returns:
        The :class:`Layout`; ``changes`` lists the keys whose value differs from ``keys`` (only with
        ``prompts_per_step`` set).

    Raises:
        ValueError: the layout cannot hold; the message names the key to change and how: completions per step that
            do not split over the processes, no micro-batch that trains whole rows, a command-line key that contradicts
            the recipe's prompts, ``prompts_per_generation`` not a multiple of ``prompts_per_step``, a generation
            batch of partial groups or larger than the data set.
    """
    if not (isinstance(num_processes, int) and num_processes >= 1):
        raise ValueError(f"num_processes must be a whole number >= 1, got {num_processes!r}.")
    w = num_processes
    b0 = _positive(keys, "per_device_train_batch_size")
    g0 = _positive(keys, "gradient_accumulation_steps")
    n = _positive(keys, "num_generations")
    m = _positive(keys, "num_train_generations") or n
    s_written = _positive(keys, "steps_per_generation")
    generation_batch = _positive(keys, "generation_batch_size")
    p_step, p_gen = _positive(keys, "prompts_per_step"), _positive(keys, "prompts_per_generation")
    even = m < n or bool(_value(keys, "drop_uninformative_groups", False))
    unit = n // math.gcd(n, m) if even else 1  # smallest micro-batch whose trained share of every group is whole

    if p_step is None:
        if p_gen is not None:
            raise ValueError("prompts_per_generation is set without prompts_per_step: set prompts_per_step too.")
        s0 = s_written or (generation_batch // (b0 * w) if generation_batch else g0)
        layout = Layout(w, n, m, b0, g0, s0)
        if layout.completions_per_generation % n:
            raise ValueError(
                f"num_generations ({n}) must divide the {layout.completions_per_generation} completions generated at "
                f"once: per_device_train_batch_size ({b0}) x steps_per_generation ({s0}) x processes ({w}). Change "
                "num_generations or per_device_train_batch_size, or set prompts_per_step to have them derived."
            )
        _check_fits(layout.prompts_per_generation, num_prompts, "per_device_train_batch_size or steps_per_generation")
        return layout

    if generation_batch is not None:
        raise ValueError(
            "generation_batch_size and prompts_per_step are both set: remove generation_batch_size (the generation "
            "batch is prompts_per_generation x num_generations)."
        )
    s0 = s_written or g0
    if p_gen is None:
        if s0 % g0:
            raise ValueError(
                f"steps_per_generation ({s0}) is not a multiple of gradient_accumulation_steps ({g0}): set "
                "prompts_per_generation, the prompts generated at once."
            )
        p_gen = p_step * (s0 // g0)
    if p_gen % p_step:
        raise ValueError(
            f"prompts_per_generation ({p_gen}) must be a multiple of prompts_per_step ({p_step}) so that a generation "
            f"batch is trained in whole optimizer steps: set it to {p_step * max(1, round(p_gen / p_step))}."
        )
    _check_fits(p_gen, num_prompts, "prompts_per_generation")
    k = p_gen // p_step
    step = p_step * n  # completions per optimizer step, all processes
    if step % w:
        raise ValueError(
            f"prompts_per_step ({p_step}) x num_generations ({n}) = {step} completions per optimizer step do not "
            f"split evenly over {w} processes: run on a number of processes that divides {step}, or set "
            f"prompts_per_step to a multiple of {w // math.gcd(w, n)}."
        )
    rows = step // w  # completions per process per optimizer step
    if rows % unit:
        most = step // unit
        raise ValueError(
            f"{w} processes get {rows} completion(s) each per optimizer step, and a micro-batch needs a multiple of "
            f"{unit} to train whole rows (per_device_train_batch_size x num_train_generations ({m}) must be a multiple "
            f"of num_generations ({n})): run on a number of processes that divides {most}, or set prompts_per_step "
            f"to a multiple of {w * unit // math.gcd(w * unit, n)}."
        )
    options = [d for d in range(unit, rows + 1, unit) if rows % d == 0]  # micro-batches that give whole rows
    if {"per_device_train_batch_size", "gradient_accumulation_steps"} <= set(fixed) and b0 * g0 != rows:
        raise ValueError(
            f"per_device_train_batch_size {b0} x gradient_accumulation_steps {g0} (both on the command line) must be "
            f"the {rows} completions each of {w} processes takes per optimizer step for prompts_per_step {p_step}: "
            "pass only one of them, or values whose product is that."
        )
    if "per_device_train_batch_size" in fixed:
        chosen = [b0] if b0 in options else []
        if not chosen:
            raise ValueError(
                f"per_device_train_batch_size {b0} (command line) does not give prompts_per_step {p_step} on {w} "
                f"processes: each process takes {rows} completions per optimizer step, so pass one of {options} "
                "(gradient_accumulation_steps follows), or leave it to the recipe."
            )
    elif "gradient_accumulation_steps" in fixed:
        chosen = [rows // g0] if rows % g0 == 0 and rows // g0 in options else []
        if not chosen:
            raise ValueError(
                f"gradient_accumulation_steps {g0} (command line) does not give prompts_per_step {p_step} on {w} "
                f"processes: each process takes {rows} completions per optimizer step, so pass one of "
                f"{[rows // d for d in reversed(options)]}, or leave it to the recipe."
            )
    else:
        chosen = [d for d in options if d <= b0]
        if not chosen:
            raise ValueError(
                f"per_device_train_batch_size {b0} is below the smallest micro-batch of whole trained rows on {w} "
                f"processes ({options[0]}): set per_device_train_batch_size to at least {options[0]}."
            )
    b = max(chosen)
    g = rows // b
    s = g * k
    if "steps_per_generation" in fixed and s != s0:
        raise ValueError(
            f"steps_per_generation {s0} (command line) does not give prompts_per_generation {p_gen} on {w} "
            f"processes: pass --steps_per_generation {s} ({g} micro-batch(es) per step x {k} steps), or set "
            f"prompts_per_generation to {p_step * s0 // g if s0 % g == 0 else 'a multiple of prompts_per_step'}."
        )
    written = {"per_device_train_batch_size": b0, "gradient_accumulation_steps": g0, "steps_per_generation": s_written}
    effective = {**written, "steps_per_generation": s0}
    run = {"per_device_train_batch_size": b, "gradient_accumulation_steps": g, "steps_per_generation": s}
    changes = {key: (written[key], run[key]) for key in run if run[key] != effective[key]}
    return Layout(w, n, m, b, g, s, changes)


def _check_fits(prompts_per_generation: float, num_prompts: int | None, key: str) -> None:
    if num_prompts is not None and prompts_per_generation > num_prompts:
        raise ValueError(
            f"One generation batch takes {prompts_per_generation:g} prompts and the data set has {num_prompts}: "
            f"lower {key}, or use more problems (dataset_limit)."
        )


def layout_keys(user_keys: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`LAYOUT_KEYS` from a recipe's keys as written, unset ones at their `GBPOConfig` /
    `gbpo.recipe.GBPOScriptArguments` default (``steps_per_generation`` stays ``None`` when unset)."""
    from dataclasses import fields

    from .config import GBPOConfig
    from .recipe import GBPOScriptArguments

    defaults = {f.name: f.default for cls in (GBPOConfig, GBPOScriptArguments) for f in fields(cls)}
    return {key: user_keys.get(key, defaults.get(key)) for key in LAYOUT_KEYS}


def _take_option(argv: list[str], name: str, convert, default=None):
    """Remove ``name VALUE`` from ``argv`` and return ``convert(VALUE)`` (``default`` when absent).

    Raises:
        ValueError: ``name`` without a value, or a value ``convert`` rejects.
    """
    if name not in argv:
        return default
    i = argv.index(name)
    if i + 1 >= len(argv):
        raise ValueError(f"{name} needs a value.")
    value = argv[i + 1]
    del argv[i : i + 2]
    try:
        return convert(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a valid value.") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m gbpo.layout RECIPE.yaml --num_processes N [--gpu-memory-gib M [--zero-stage S]
    [--prompt-tokens P]] [--key value ...]``: print the layout and, with ``--gpu-memory-gib``, the memory plan per GPU
    (`gbpo.memory_plan`; ZeRO stage default 3, the launch configs'). The data set is counted, so a generation batch
    larger than it is an error here too.

    Returns:
        0: the layout holds (and the plan fits); 1: the plan does not fit (the last line names the key to lower);
        2: an error (printed as ``gbpo.layout: error: ...``).
    """
    from .data import load_benchmark
    from .recipe import argv_with_config, command_line_keys, user_keys

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        num_processes = _take_option(argv, "--num_processes", int)
        if num_processes is None:
            raise ValueError("--num_processes N is required: the number of training processes.")
        gpu_memory = _take_option(argv, "--gpu-memory-gib", float)
        zero_stage = _take_option(argv, "--zero-stage", int, 3)
        prompt_tokens = _take_option(argv, "--prompt-tokens", int)
        argv = argv_with_config(argv)
        user = user_keys(argv)
        name = user.get("dataset_name", "arithmetic")
        num_prompts = len(load_benchmark(name, levels=user.get("dataset_levels"), limit=user.get("dataset_limit")))
        fixed = command_line_keys(argv)
        layout = plan_layout(layout_keys(user), num_processes, fixed=fixed, num_prompts=num_prompts)
        plan = None
        if gpu_memory is not None:
            from .memory_plan import memory_keys, model_shape, plan_memory

            keys, recipe_layout = memory_keys(user), layout_keys(user)

            def relayout(changes: dict[str, int], processes: int) -> Layout:
                unfixed = [key for key in fixed if key not in changes]
                return plan_layout({**recipe_layout, **changes}, processes, fixed=unfixed, num_prompts=num_prompts)

            shape = model_shape(str(keys["model_name_or_path"]))
            plan = plan_memory(
                keys, layout, shape, gpu_memory, zero_stage=zero_stage, prompt_tokens=prompt_tokens, relayout=relayout
            )
    except (ValueError, FileNotFoundError, IndexError) as e:
        print(f"gbpo.layout: error: {e}", file=sys.stderr)
        return 2
    print(layout.change_line() or f"batch layout for {layout.summary()}: the recipe's keys as written.")
    if plan is not None:
        print("\n".join(plan.lines()))
        return 0 if plan.fits else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
