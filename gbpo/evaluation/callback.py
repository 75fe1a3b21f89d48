"""`BenchmarkEvalCallback`: benchmark pass@k / maj@k every ``eval_steps`` during training, as a `TrainerCallback`.

The shape is TRL's `LogCompletionsCallback` (trl/trainer/callbacks.py): the callback holds the trainer, runs in
``on_step_end`` every ``eval_steps`` (its own ``eval_steps`` or the trainer's), and leaves the trainer's arguments
alone, so ``eval_strategy`` keeps its meaning (evaluating an ``eval_dataset``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from transformers import Trainer, TrainerCallback

from .generation import _load_named, evaluate_benchmarks
from .metrics import _check_int, _check_ks, check_answer_extraction, compute_metrics, default_ks

__all__ = ["BenchmarkEvalCallback", "SAMPLE_FIELDS", "read_eval_samples", "write_eval_samples"]

# What a per-sample record keeps of `evaluate_benchmarks`'s records (the prompt text is the benchmark's, not kept).
SAMPLE_FIELDS = ("index", "id", "problem", "level", "answer", "extracted", "correct", "votes", "samples",
                 "completion_tokens", "truncated")  # fmt: skip

logger = logging.getLogger(__name__)


def pad_and_drop_shard(num_rows: int, rank: int, world_size: int) -> tuple[list[int], int]:
    """The rows one process evaluates, padded so that every process gets the same number.

    Each of the ``world_size`` processes takes ``ceil(num_rows / world_size)`` rows, contiguously; the last
    processes fill their share by repeating the last row. Every process therefore makes the same number of
    ``generate`` calls (ZeRO-3 without gathered weights hangs otherwise), and the repeated rows are dropped after
    gathering.

    Args:
        num_rows: rows of the benchmark (>= 1).
        rank: this process's index, in 0..world_size - 1.
        world_size: number of processes (>= 1).

    Returns:
        ``(indices, num_real)``: the row indices this process evaluates (always ``ceil(num_rows / world_size)`` of
        them) and how many of the first ones are real rows; the rest are padding.

    Raises:
        ValueError: ``num_rows < 1``, ``world_size < 1`` or ``rank`` outside 0..world_size - 1.
    """
    _check_int("num_rows", num_rows, 1)
    _check_int("world_size", world_size, 1)
    _check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size, got rank={rank}, world_size={world_size}.")
    per = math.ceil(num_rows / world_size)
    positions = range(rank * per, (rank + 1) * per)
    return [min(i, num_rows - 1) for i in positions], sum(i < num_rows for i in positions)


def write_eval_samples(path: str | Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """Write one benchmark evaluation's per-problem records to ``path`` as gzipped JSON lines.

    Each line keeps the fields of ``SAMPLE_FIELDS`` a record has: the problem and its gold ``answer``, every sample's
    text (``samples``), extracted answer (``extracted``, None: none found) and grade (``correct``), and the majority
    vote of the first k samples for each k (``votes``: ``{k: {"label", "ratio", "correct"}}``). The gzip header holds
    no time stamp, so the same records give the same bytes. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({k: r[k] for k in SAMPLE_FIELDS if k in r}) + "\n" for r in records)
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(lines.encode())
    return path


def read_eval_samples(path: str | Path) -> list[dict[str, Any]]:
    """The records :func:`write_eval_samples` wrote to ``path``."""
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


@contextlib.contextmanager
def _restored_rng():
    """Python's, NumPy's and torch's (CPU and current CUDA device) RNG states restored on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class BenchmarkEvalCallback(TrainerCallback):
    """Evaluate benchmarks every ``eval_steps`` during training and log ``<prefix>/<name>/pass@k`` and ``maj@k``.

    At the end of every ``eval_steps``-th optimizer step each process samples ``num_samples`` completions for its
    share of each benchmark's problems (every process gets the same number: see :func:`pad_and_drop_shard`), the
    graded records are gathered, and every process computes the same metrics with
    :func:`gbpo.evaluation.compute_metrics`: ``<prefix>/<name>/pass@1`` (avg@n) with its 95% interval over problems
    (``pass@1_ci95_low``, ``pass@1_ci95_high``), ``pass@k`` for k > 1 and ``maj@k`` for k in 1, 2, 4, ..., n
    (fractions in [0, 1]). They go to the trainer's trackers through `Trainer.log` (not
    `GRPOTrainer.log`, which would flush the training metrics gathered so far) and into ``state.log_history``.

    Generation: with ``use_vllm`` and ``vllm_mode="colocate"`` (one engine per process, tensor parallel size 1) the
    trainer's own engine generates, after the trainer's weight sync (``vllm_generation.sync_weights``) when the
    engine has not yet seen this step's weights; otherwise (no vLLM, server mode, tensor parallelism) transformers'
    ``generate`` on the unwrapped model, through TRL's `unwrap_model_for_generation`, which gathers ZeRO-3 weights
    (``ds3_gather_for_generation``) and re-enables gradient checkpointing with ``gradient_checkpointing_kwargs``
    (as TRL set them, e.g. ``use_reentrant`` forced for PEFT + ZeRO-3). Afterwards the model's train/eval mode of
    every module and the Python, NumPy and torch RNG states are as they were. The sampling seed is
    ``args.seed + global_step``.

    The main process writes each evaluation's per-problem records (every sample, its extracted answer and grade, the
    majority votes, the gold answer) to ``output_dir/eval_samples/<name>-step<N>.jsonl.gz`` (:func:`write_eval_samples`;
    ``save_samples=False`` turns it off), and ``seconds`` adds up the wall time spent evaluating, which `gbpo.train`
    reports apart from training in ``run.json``.

    Args:
        trainer: the `GBPOTrainer` (or `GRPOTrainer`) being trained.
        benchmarks: ``{name: datasets.Dataset}`` with ``prompt`` and ``answer`` columns (e.g. from
            `gbpo.data.load_benchmark`), or a list of benchmark names/files.
        eval_steps: evaluate every this many optimizer steps; default the trainer's ``eval_steps`` (a fraction of
            the run is allowed there, as in `TrainingArguments`).
        num_samples, temperature, top_p, max_new_tokens, fallback_last_number, answer_extraction: sampling and
            grading; default the config's ``eval_num_samples`` (else 4), ``eval_temperature`` (0.6), ``eval_top_p``
            (0.95), ``eval_max_new_tokens`` (else ``max_completion_length``), ``eval_fallback_last_number`` (False),
            ``eval_answer_extraction`` (``"lenient"``, see `gbpo.evaluation.evaluate_benchmarks`).
        batch_size: sequences per transformers ``generate`` call; default
            ``per_device_eval_batch_size * num_samples``.
        prefix: the metric name prefix.
        save_samples: write the per-problem records of each evaluation under ``output_dir/eval_samples``.

    Raises:
        ValueError: no ``eval_steps`` here or in the trainer's arguments, an empty benchmark or one without
            ``prompt``/``answer``, or sampling settings out of range.
    """

    def __init__(
        self,
        trainer,
        benchmarks: Mapping[str, Any] | list[str],
        *,
        eval_steps: int | None = None,
        num_samples: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        fallback_last_number: bool | None = None,
        answer_extraction: str | None = None,
        batch_size: int | None = None,
        prefix: str = "eval",
        save_samples: bool = True,
    ):
        args = trainer.args

        def default(value, key, fallback):
            return value if value is not None else getattr(args, key, None) or fallback

        self.trainer = trainer
        self.benchmarks = _load_named(benchmarks)
        if eval_steps is None and args.eval_steps is None:
            raise ValueError(
                "BenchmarkEvalCallback needs eval_steps: pass eval_steps=N or set eval_steps in the training "
                "arguments (eval_strategy can stay 'no': it controls evaluation of an eval_dataset)."
            )
        if eval_steps is not None:
            _check_int("eval_steps", eval_steps, 1)
        self.eval_steps = eval_steps
        self.num_samples = _check_int("num_samples", default(num_samples, "eval_num_samples", 4), 1)
        self.temperature = temperature if temperature is not None else getattr(args, "eval_temperature", 0.6)
        self.top_p = top_p if top_p is not None else getattr(args, "eval_top_p", 0.95)
        self.max_new_tokens = default(max_new_tokens, "eval_max_new_tokens", args.max_completion_length)
        self.fallback_last_number = bool(default(fallback_last_number, "eval_fallback_last_number", False))
        self.answer_extraction = check_answer_extraction(
            default(answer_extraction, "eval_answer_extraction", "lenient"), "answer_extraction"
        )
        self.batch_size = batch_size or args.per_device_eval_batch_size * self.num_samples
        self.ks = _check_ks(None, self.num_samples)
        self.prefix = prefix
        self.save_samples = save_samples
        self.seconds = 0.0  # wall time spent in evaluate(), summed
        self._announced = False

    def on_step_end(self, args, state, control, **kwargs):
        freq = self.eval_steps or state.eval_steps
        if not freq or state.global_step % freq != 0:
            return
        metrics = self.evaluate()
        should_log = control.should_log  # the trainer's own logging of this step, which `on_log` below switches off
        Trainer.log(self.trainer, dict(metrics))
        control.should_log = should_log

    # ------------------------------------------------------------------ evaluation

    def _vllm_engine(self):
        """The trainer's colocated ``vllm.LLM`` with this step's weights, or None when transformers generates."""
        trainer = self.trainer
        if not getattr(trainer, "use_vllm", False):
            return None, "transformers (the trainer does not use vLLM)"
        generation = trainer.vllm_generation
        if trainer.vllm_mode != "colocate" or generation.tensor_parallel_size != 1:
            why = "server mode" if trainer.vllm_mode != "colocate" else "tensor parallelism"
            return None, f"transformers (the trainer's vLLM runs in {why}, which this callback does not drive)"
        if trainer.state.global_step != trainer._last_loaded_step or getattr(generation, "_llm_weights_sleeping", 0):
            generation.sync_weights()  # TRL's own weight sync (and whatever the trainer put in its place)
            trainer._last_loaded_step = trainer.state.global_step
        return generation.llm, "the trainer's colocated vLLM engine"

    def evaluate(self) -> dict[str, float]:
        """Run the evaluation now (every process must call it) and return the metrics (without logging them)."""
        started = time.monotonic()
        try:
            return self._evaluate()
        finally:
            self.seconds += time.monotonic() - started

    def _evaluate(self) -> dict[str, float]:
        trainer, args = self.trainer, self.trainer.args
        accelerator = trainer.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        shards, num_real = {}, {}
        for name, dataset in self.benchmarks.items():
            indices, num_real[name] = pad_and_drop_shard(len(dataset), rank, world)
            shards[name] = dataset.select(indices)
        settings = dict(
            num_samples=self.num_samples,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=args.seed + trainer.state.global_step,
            batch_size=self.batch_size,
            fallback_last_number=self.fallback_last_number,
            answer_extraction=self.answer_extraction,
            ks=self.ks,
            progress=False,
        )
        with _restored_rng():
            llm, backend = self._vllm_engine()
            if not self._announced:
                logger.info("Benchmark evaluation generates with %s.", backend)
                self._announced = True
            if llm is not None:
                sleeping = getattr(trainer.vllm_generation, "enable_sleep_mode", False)
                if sleeping:
                    llm.wake_up(tags=["kv_cache"])
                try:
                    result = evaluate_benchmarks(llm, trainer.processing_class, shards, **settings)
                finally:
                    if sleeping:  # as TRL after generating: the next generation re-syncs the weights
                        llm.sleep(level=2)
                        trainer.vllm_generation._llm_weights_sleeping = True
            else:
                from trl.models.utils import unwrap_model_for_generation

                with unwrap_model_for_generation(
                    trainer.model_wrapped,
                    accelerator,
                    gather_deepspeed3_params=args.ds3_gather_for_generation,
                    gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
                ) as unwrapped:
                    result = evaluate_benchmarks(unwrapped, trainer.processing_class, shards, **settings)
        metrics = {}
        for name in self.benchmarks:
            records = result["benchmarks"][name]["records"][: num_real[name]]
            if world > 1:
                records = [r for part in gather_object([records]) for r in part]
            scores = compute_metrics(records, self.ks)
            if self.save_samples and accelerator.is_main_process:
                step = trainer.state.global_step
                write_eval_samples(Path(args.output_dir) / "eval_samples" / f"{name}-step{step}.jsonl.gz", records)
            metrics[f"{self.prefix}/{name}/pass@1"] = scores["pass@1"]
            for end in ("low", "high"):  # the 95% interval of avg@n (= pass@1) over problems
                metrics[f"{self.prefix}/{name}/pass@1_ci95_{end}"] = scores[f"avg@{self.num_samples}_ci95_{end}"]
            for k in default_ks(self.num_samples):
                if k > 1:
                    metrics[f"{self.prefix}/{name}/pass@{k}"] = scores[f"pass@{k}"]
                metrics[f"{self.prefix}/{name}/maj@{k}"] = scores[f"maj@{k}"]
        return metrics
