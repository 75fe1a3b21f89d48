"""The end of a distributed run: :func:`shutdown_distributed`, which `gbpo.train` calls on every rank before it exits.

Torch only, so that a script can import it without TRL's start-up cost.
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["shutdown_distributed"]


def _gloo_workers_busy() -> bool:
    """Whether a gloo worker thread (``pt_gloo_runloop``) of this process is running or runnable (Linux ``/proc``).

    An idle worker sleeps on its queue's condition variable; one that has just finished a collective but has not yet
    dropped it is runnable. False where ``/proc/self/task`` does not exist.
    """
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return False
    for task in tasks.iterdir():
        try:
            if (task / "comm").read_text().strip() != "pt_gloo_runloop":
                continue
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # the thread ended while we looked
            continue
        if state == "R":
            return True
    return False


def shutdown_distributed(trainer=None, timeout: float = 10.0) -> None:
    """End ``torch.distributed`` in this process before the interpreter exits; a no-op when it was never started.

    PyTorch asks every process to call ``destroy_process_group()`` at the end of a run ("Shutdown" in its
    distributed docs). A colocated vLLM engine of ``trainer`` (TRL's ``vllm_generation``) is shut down first, through
    its engine client's ``shutdown()``, since vLLM destroys its own groups there and fails on groups already gone.
    Then the groups left are destroyed, and this waits (the GIL released) until no gloo worker thread is runnable, at
    most ``timeout`` seconds.

    The wait is for CPU runs (gloo): DeepSpeed and the parameters still hold the groups after the destroy, so gloo's
    worker threads live on, and a worker that finished the last collective but was not yet scheduled to drop it can
    free a tensor owned by Python while the interpreter shuts down. Taking the GIL then kills that thread inside C++
    and aborts the process (``terminate called without an active exception``, exit -6) after a run that finished and
    saved its model. Seen under CPU load in the two-rank ZeRO tests.

    Args:
        trainer: the run's trainer (a TRL ``GRPOTrainer``), or None when there is no vLLM engine to shut down.
        timeout: the longest wait for gloo's workers, in seconds; past it the function returns anyway.

    Call it on every rank, after the run's last collective (``gbpo.train`` calls it after its closing barrier).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    llm = getattr(getattr(trainer, "vllm_generation", None), "llm", None)
    if llm is not None:
        llm.llm_engine.engine_core.shutdown()
    if dist.is_initialized():
        dist.destroy_process_group()
    deadline = time.monotonic() + timeout
    idle = 0
    while idle < 2 and time.monotonic() < deadline:  # two idle samples in a row: a worker between states is caught
        time.sleep(0.01)
        idle = 0 if _gloo_workers_busy() else idle + 1
