"""Runs that survive preemption: a checkpoint on SIGTERM, and resuming only from complete checkpoints.

Schedulers (SLURM, Kubernetes, spot instances) preempt with SIGTERM and a grace period. :class:`PreemptionCallback`
turns SIGTERM into "save a checkpoint at the end of this step, then stop"; `gbpo.train` then exits with status 143
and ``--resume_from_checkpoint true`` continues from it with the same global step, optimizer, scheduler and RNG state.

The Trainer writes ``trainer_state.json`` last when it saves a checkpoint, so a checkpoint directory without it was
cut off mid-save. :func:`last_complete_checkpoint` skips such a directory and renames it out of the way
(``checkpoint-N.incomplete``), so that neither resuming nor the Trainer's checkpoint rotation ever takes it for the
latest one; nothing is deleted.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = ["PreemptionCallback", "is_complete_checkpoint", "last_complete_checkpoint", "resolve_resume"]

logger = logging.getLogger(__name__)
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def is_complete_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a checkpoint directory whose save finished (it holds ``trainer_state.json``)."""
    return (Path(path) / TRAINER_STATE).is_file()


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir``, or None; incomplete newer ones are renamed aside.

    Only the main process should call it (it renames directories).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))),
        reverse=True,
    )
    for _, path in found:
        if is_complete_checkpoint(path):
            return str(path)
        aside = path.with_name(path.name + ".incomplete")
        logger.warning("%s has no %s (its save was cut off): moved to %s.", path, TRAINER_STATE, aside)
        os.replace(path, aside)
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


class PreemptionCallback(TrainerCallback):
    """On SIGTERM: finish the current optimizer step, save a checkpoint, stop training (``self.preempted`` is True).

    The signal handler only sets a flag (installed from the main thread at the start of training, the previous
    handler restored at the end). At each step end the flag is combined over all processes, so every rank saves and
    stops at the same step even when the signal reached only some of them.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.preempted = False
        self._received = False
        self._previous = {}

    def _handle(self, signum, frame):
        logger.warning("Received signal %s: saving a checkpoint at the end of this step, then stopping.", signum)
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
