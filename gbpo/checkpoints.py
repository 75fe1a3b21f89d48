"""Runs that survive preemption: a checkpoint on SIGTERM or SIGUSR1, exact resume at any step, complete checkpoints.

Schedulers (SLURM, Kubernetes, spot instances) preempt with SIGTERM and a grace period, often short: torchrun and
SLURM (``KillWait``, 30 s by default) kill a worker 30 s after its SIGTERM, less than the current step plus a ZeRO-3
save of a 1.5B model with its Adam state (README, "Preemption and resume"). A SLURM job can ask for an earlier signal
before its time limit (``sbatch --signal=B:USR1@600``; launch/slurm_vllm_server.sh does, and passes it on to the
training processes). :class:`PreemptionCallback` turns either signal into "save a checkpoint at the end of this step,
then stop"; `gbpo.train` then exits with status 143 and ``--resume_from_checkpoint true`` continues from it with the
same global step, optimizer, scheduler and RNG state.

TRL's `GRPOTrainer` generates once every ``steps_per_generation * num_iterations`` optimizer micro-steps and trains
on a buffer of that generation batch in between (``_buffered_inputs``, indexed by its micro-step counter ``_step``).
Neither is part of a Trainer checkpoint, so a run resumed mid-cycle would generate a fresh batch where the
uninterrupted run reuses the buffered one. :class:`ExactResumeMixin` saves both with every checkpoint (one file per
process, ``generation_buffer_<rank>.pt``) and restores them on resume, so a resumed run continues exactly as the
uninterrupted one, mid-cycle included.

The Trainer writes ``trainer_state.json`` last when it saves a checkpoint, so a checkpoint directory without it was
cut off mid-save. :func:`last_complete_checkpoint` skips such a directory and renames it out of the way
(``incomplete-checkpoint-N``, outside the ``checkpoint-*`` names that resuming and the Trainer's checkpoint rotation
look at), so it is never taken for the latest one, never counted by ``save_total_limit`` and never deleted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import threading
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = [
    "PREEMPTION_SIGNALS",
    "RUN_FILES",
    "check_output_dir",
    "ExactResumeMixin",
    "PreemptionCallback",
    "is_complete_checkpoint",
    "last_complete_checkpoint",
    "resolve_resume",
]

logger = logging.getLogger(__name__)
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_LEGACY_ASIDE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)\.incomplete$")  # the name used by gbpo 0.1.0
ASIDE_PREFIX = "incomplete-"
GENERATION_BUFFER = "generation_buffer_{rank}.pt"


def is_complete_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a checkpoint directory whose save finished (it holds ``trainer_state.json``)."""
    return (Path(path) / TRAINER_STATE).is_file()


def _move_aside(path: Path, name: str) -> Path:
    """Rename ``path`` to ``ASIDE_PREFIX + name`` (``-2``, ``-3``, ... appended if taken); returns the new path."""
    aside, n = path.with_name(ASIDE_PREFIX + name), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{ASIDE_PREFIX}{name}-{n}")
    os.replace(path, aside)
    return aside


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir``, or None; incomplete newer ones are renamed aside.

    A directory cut off mid-save becomes ``incomplete-checkpoint-N``; one already set aside under the old name
    ``checkpoint-N.incomplete`` (which the Trainer's rotation counts and deletes) is renamed the same way. Only the main
    process should call it (it renames directories).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    for path in output_dir.iterdir():
        if path.is_dir() and (m := _LEGACY_ASIDE.match(path.name)):
            aside = _move_aside(path, f"{PREFIX_CHECKPOINT_DIR}-{m.group(1)}")
            logger.warning("%s is a cut-off checkpoint: moved to %s.", path, aside)
    found = sorted(
        ((int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))),
        reverse=True,
    )
    for _, path in found:
        if is_complete_checkpoint(path):
            return str(path)
        aside = _move_aside(path, path.name)
        logger.warning("%s has no %s (its save was cut off): moved to %s.", path, TRAINER_STATE, aside)
    return None


def resolve_resume(resume_from_checkpoint: str | bool | None, output_dir: str | Path) -> str | None:
    """What to pass to ``Trainer.train(resume_from_checkpoint=...)`` for a recipe's ``resume_from_checkpoint``.

    ``None``/``false``: start afresh. ``true``/``last``: the newest complete checkpoint of ``output_dir`` (afresh when
    there is none). A path: that checkpoint.

    Raises:
        ValueError: a path that is not a complete checkpoint, naming what is missing.
    """
    if resume_from_checkpoint in (None, False) or str(resume_from_checkpoint).lower() in ("false", "no", ""):
        return None
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() in ("true", "yes", "last"):
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            logger.warning("resume_from_checkpoint: no complete checkpoint in %s, starting afresh.", output_dir)
        return checkpoint
    if not is_complete_checkpoint(resume_from_checkpoint):
        raise ValueError(
            f"resume_from_checkpoint={resume_from_checkpoint!r} is not a complete checkpoint (no {TRAINER_STATE} in "
            "it): pass another checkpoint-N directory, or `true` for the newest complete one in output_dir."
        )
    return str(resume_from_checkpoint)


PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionCallback(TrainerCallback):
    """On SIGTERM or SIGUSR1: finish the current optimizer step, save a checkpoint, stop (``self.preempted`` is True).

    SIGTERM is what schedulers send when they preempt; SIGUSR1 is the early warning a job asks for
    (``sbatch --signal=B:USR1@600``: 600 s before its time limit), which leaves time for the step and the save where
    the 30 s after a SIGTERM may not. The signal handler only sets a flag (installed from the main thread at the start
    of training, the previous handler restored at the end). At each step end the flag is combined over all processes,
    so every rank saves and stops at the same step even when the signal reached only some of them.

    Args:
        signals: the signals that preempt (default :data:`PREEMPTION_SIGNALS`).
    """

    def __init__(self, signals: tuple[int, ...] = PREEMPTION_SIGNALS):
        self.signals = signals
        self.preempted = False
        self.received_signal: int | None = None
        self._received = False
        self._previous = {}

    def _handle(self, signum, frame):
        logger.warning(
            "Received %s: saving a checkpoint at the end of this step, then stopping.", signal.Signals(signum).name
        )
        self.received_signal = signum
        self._received = True

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        received = self._received
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([float(received)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            received = bool(flag.item())
        if received:
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class ExactResumeMixin:
    """Put TRL's generation buffer into every checkpoint, so that resuming mid-cycle is exact.

    For a `trl.GRPOTrainer` subclass (listed before it in the bases). `GRPOTrainer` generates when its micro-step
    counter ``_step`` is a multiple of ``steps_per_generation * num_iterations`` and otherwise trains on the slice
    ``_buffered_inputs[_step % steps_per_generation]`` of the last generation batch. Both are saved beside the RNG
    state (``_save_rng_state``, so before ``trainer_state.json`` marks the checkpoint complete), one file per process
    (``generation_buffer_<rank>.pt``: the tensors of the process's share of the generation batch, completions, masks,
    advantages and old log-probs), and loaded back where the Trainer restores the RNG state on resume
    (``_load_rng_state``, just before the first resumed micro-step).

    A checkpoint without the file (saved at a generation boundary, by ``save_only_model``, or by an older version)
    resumes as TRL does: ``_step`` restarts at 0 and the next step generates; exact only at a generation boundary.

    Raises:
        ValueError: on resume, the file was written by a run with another ``steps_per_generation`` or
            ``num_iterations`` (its buffer would be sliced differently).
    """

    def _generation_cycle(self) -> int:
        return self.args.steps_per_generation * self.num_iterations

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self._buffered_inputs is None or self._step % self._generation_cycle() == 0:
            return  # the next micro-step generates a new batch: nothing to carry over
        state = {
            "step": self._step,
            "steps_per_generation": self.args.steps_per_generation,
            "num_iterations": self.num_iterations,
            "buffered_inputs": self._buffered_inputs,
        }
        torch.save(state, os.path.join(output_dir, GENERATION_BUFFER.format(rank=self.accelerator.process_index)))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = Path(checkpoint) / GENERATION_BUFFER.format(rank=self.accelerator.process_index)
        if not path.is_file():
            return
        device = self.accelerator.device
        state = torch.load(path, map_location="cpu" if device.type == "cpu" else device, weights_only=False)
        saved = (state["steps_per_generation"], state["num_iterations"])
        if saved != (self.args.steps_per_generation, self.num_iterations):
            raise ValueError(
                f"{path} holds a generation batch for steps_per_generation={saved[0]}, num_iterations={saved[1]}; "
                f"this run has {self.args.steps_per_generation} and {self.num_iterations}: resume with the same "
                "values (or delete the file to regenerate, which is not an exact resume)."
            )
        self._step = state["step"]
        self._buffered_inputs = state["buffered_inputs"]


RUN_FILES = ("metrics.jsonl", "run.json", "eval_samples", "trainer_state.json", "config.json", "adapter_config.json",
             "model.safetensors")  # fmt: skip


def _run_artifacts(output_dir: Path) -> list[Path]:
    """What an earlier run left in ``output_dir``: checkpoints (complete or set aside), metrics, a saved model."""
    if not output_dir.is_dir():
        return []
    return sorted(
        p
        for p in output_dir.iterdir()
        if p.name.startswith(("checkpoint-", "incomplete-checkpoint-")) or p.name in RUN_FILES
    )


def check_output_dir(output_dir: str | Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to start afresh over an earlier run; with ``overwrite``, delete that run's files first.

    A run that resumes (``resume`` is a checkpoint) continues the directory's run. Otherwise, a directory holding
    checkpoints, ``metrics.jsonl`` or a saved model would end up mixing two runs (stale checkpoints picked by a later
    resume, rotation deleting the old run's checkpoints, metrics overwritten).

    Raises:
        ValueError: ``output_dir`` holds an earlier run, and neither ``resume`` nor ``overwrite`` is set.
    """
    if resume is not None:
        return
    output_dir = Path(output_dir)
    found = _run_artifacts(output_dir)
    if not found:
        return
    names = ", ".join(p.name for p in found[:5]) + (", ..." if len(found) > 5 else "")
    if not overwrite:
        raise ValueError(
            f"output_dir {output_dir} holds an earlier run ({names}) and no complete checkpoint is being resumed: "
            "set resume_from_checkpoint: true to continue it (when it has a checkpoint), overwrite_output_dir: true "
            "to delete it and start afresh, or another output_dir."
        )
    print(f"overwrite_output_dir: deleting the earlier run in {output_dir}: {names}", file=sys.stderr)
    for path in _run_artifacts(output_dir):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in output_dir.glob("*.safetensors"):  # sharded model files and adapters of the earlier run
        path.unlink()
