"""The sandboxed pool of worker processes for symbolic grading, its limits (`configure_grading`) and counters
(`grading_stats`). The workers run `gbpo.grading.worker` loaded by path in fresh interpreters."""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Any

logger = logging.getLogger("gbpo.grading")

MAX_DEFAULT_WORKERS = 2


def default_workers() -> int:
    """Grading workers per training process: the CPUs this process may run on, shared by the training processes of
    its node, at least 1 and at most :data:`MAX_DEFAULT_WORKERS`.

    The CPUs are the process's affinity set (`os.sched_getaffinity`: what ``srun --cpus-per-task``, ``taskset`` or a
    cgroup cpuset gives it, where ``os.cpu_count`` would count the whole machine); the training processes of the node
    are ``LOCAL_WORLD_SIZE`` (set by torchrun and ``accelerate launch``; 1 without it). So 8 trainers bound to one
    CPU start one worker each, not two, and a 2-core machine with one trainer keeps two.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this platform (macOS)
        cpus = os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    except ValueError:
        local = 1
    return max(1, min(MAX_DEFAULT_WORKERS, cpus // local))


_CONFIG: dict[str, Any] = {
    "workers": default_workers(),
    "item_timeout_s": 3,
    "batch_deadline_s": 15.0,
    "memory_limit_mb": 2048,
    "max_symbolic_pairs": 256,
}
_STATS_KEYS = (
    "key_decisions",  # comparisons settled by keys or exact values
    "screened",  # answers kept away from sympy by the screen
    "cache_hits",  # symbolic results served from the cache
    "symbolic_tasks",  # items sent to the worker pool
    "timeouts",  # items over their timeout (alarm or kill)
    "failures",  # items that raised, ran out of memory or crashed their worker
    "deadline_kills",  # calls whose deadline killed busy workers
    "unresolved",  # items left unresolved by a deadline or an unavailable pool (key-only fallback)
    "pair_cap",  # symbolic pairs skipped over max_symbolic_pairs (key-only fallback)
    "worker_starts",  # worker processes started
    "worker_kills",  # worker processes killed (timeouts, deadlines)
)
_STATS: dict[str, int] = dict.fromkeys(_STATS_KEYS, 0)
_STATS_LOCK = threading.Lock()


def _count(name: str, n: int = 1) -> None:
    with _STATS_LOCK:
        _STATS[name] += n


def configure_grading(
    *,
    workers: int | None = None,
    item_timeout_s: int | None = None,
    batch_deadline_s: float | None = None,
    memory_limit_mb: int | None = None,
    max_symbolic_pairs: int | None = None,
) -> dict[str, Any]:
    """Set the limits of the symbolic grading pool; arguments left None keep their value.

    Args:
        workers: worker processes (default :func:`default_workers`: the CPUs given to this process per training
            process of its node, 1 or 2); the pool is restarted when this changes.
        item_timeout_s: whole seconds of ``signal.alarm`` per symbolic item (default 3); a worker still busy one second
            later is killed.
        batch_deadline_s: seconds one call may spend on symbolic work (default 15); then the busy workers are killed
            and replaced and the unresolved comparisons use the keys only.
        memory_limit_mb: address-space cap of each worker (``RLIMIT_AS``, default 2048); applies to new workers.
        max_symbolic_pairs: symbolic comparisons one vote may ask for (default 256), the largest classes first.

    Returns:
        The settings now in force (a copy).

    Raises:
        TypeError: ``item_timeout_s`` is not an int (``signal.alarm`` only takes whole seconds).
        ValueError: a value is not positive.
    """
    updates = {
        "workers": workers,
        "item_timeout_s": item_timeout_s,
        "batch_deadline_s": batch_deadline_s,
        "memory_limit_mb": memory_limit_mb,
        "max_symbolic_pairs": max_symbolic_pairs,
    }
    if item_timeout_s is not None and (isinstance(item_timeout_s, bool) or not isinstance(item_timeout_s, int)):
        raise TypeError(f"item_timeout_s must be an int (signal.alarm takes whole seconds), got {item_timeout_s!r}")
    for name, value in updates.items():
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    restart = workers is not None and workers != _CONFIG["workers"]
    _CONFIG.update({k: v for k, v in updates.items() if v is not None})
    if restart:
        shutdown_grading_pool()
    return dict(_CONFIG)


def grading_stats() -> dict[str, int]:
    """Counters since start-up: key decisions, screened answers, cache hits, symbolic tasks, timeouts, failures,
    deadline kills, unresolved items, pair-cap skips, worker starts and kills. Returns a copy."""
    with _STATS_LOCK:
        return dict(_STATS)


# The worker loads worker.py by path, not as ``gbpo.grading.worker``: no package __init__, no relative imports,
# nothing of the parent's __main__; only the standard library and math-verify.
_WORKER_CODE = (
    "import importlib.util, json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "spec = importlib.util.spec_from_file_location('_gbpo_grading_worker', sys.argv[2]); "
    "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m); "
    "m._worker_main(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))"
)
_WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
_KILL_GRACE_S = 1.0
_START_TIMEOUT_S = 60.0


class _Worker:
    def __init__(self, memory_limit_mb: int):
        paths = [p for p in sys.path if isinstance(p, str)]
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, json.dumps(paths), _WORKER_FILE]
                + [str(task_r), str(result_w), str(memory_limit_mb)],
                pass_fds=(task_r, result_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
            )
        except BaseException:
            for fd in (task_r, task_w, result_r, result_w):
                os.close(fd)
            raise
        os.close(task_r)
        os.close(result_w)
        self.send_conn = Connection(task_w, readable=False)
        self.recv_conn = Connection(result_r, writable=False)
        self.ready = False
        self.task: int | None = None
        self.started = self.sent_at = time.monotonic()
        _count("worker_starts")

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        for conn in (self.send_conn, self.recv_conn):
            try:
                conn.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class _Pool:
    """Worker processes that run (op, args) items with per-item timeouts and a per-call deadline."""

    def __init__(self, n_workers: int):
        self.pid = os.getpid()
        self.n_workers = n_workers
        self.workers: list[_Worker] = []
        self.failed_starts = 0
        self.broken_until = 0.0

    def _start_worker(self) -> None:
        try:
            self.workers.append(_Worker(_CONFIG["memory_limit_mb"]))
        except OSError as exc:
            self._start_failed(f"cannot start a grading worker: {exc!r}")

    def _start_failed(self, why: str) -> None:
        self.failed_starts += 1
        _count("failures")
        if self.failed_starts >= 3:
            self.broken_until = time.monotonic() + 300.0
            logger.error("%s; symbolic grading is off for 5 minutes (answers compare by key only)", why)
        else:
            logger.warning(why)

    def _replace(self, worker: _Worker, start_new: bool = True) -> None:
        worker.kill()
        self.workers.remove(worker)
        if start_new and time.monotonic() >= self.broken_until:
            self._start_worker()

    def shutdown(self) -> None:
        for worker in list(self.workers):
            worker.kill()
        self.workers.clear()

    def run(self, tasks: list[tuple[str, tuple]], deadline: float) -> list[tuple[str, Any]]:
        """Run the tasks; returns one (status, value) per task: status "ok", "timeout", "error", "memory" or
        "unresolved" (deadline reached or no worker available)."""
        results: list[tuple[str, Any] | None] = [None] * len(tasks)
        if time.monotonic() < self.broken_until or time.monotonic() >= deadline:
            return [("unresolved", "pool unavailable or deadline passed")] * len(tasks)
        timeout_s = _CONFIG["item_timeout_s"]
        queue = deque(range(len(tasks)))
        while len(self.workers) < min(self.n_workers, len(tasks)) and time.monotonic() >= self.broken_until:
            before = len(self.workers)
            self._start_worker()
            if len(self.workers) == before:
                break
        while queue or any(w.task is not None for w in self.workers):
            now = time.monotonic()
            if not self.workers:
                break
            if now >= deadline:
                busy = [w for w in self.workers if w.task is not None]
                if busy:
                    _count("deadline_kills")
                    logger.warning(
                        "grading deadline reached: killing %d busy worker(s), %d item(s) fall back to keys",
                        len(busy),
                        len(queue) + len(busy),
                    )
                for worker in busy:
                    _count("worker_kills")
                    self._replace(worker)
                break
            for worker in list(self.workers):
                if worker.ready and worker.task is None and queue:
                    task_id = queue.popleft()
                    op, args = tasks[task_id]
                    try:
                        worker.send_conn.send((task_id, op, args, timeout_s))
                    except (OSError, ValueError):
                        queue.appendleft(task_id)
                        self._replace(worker)
                        continue
                    worker.task, worker.sent_at = task_id, now
                    _count("symbolic_tasks")
                elif worker.task is not None and now - worker.sent_at > timeout_s + _KILL_GRACE_S:
                    # still busy past its alarm: C code that ignores signals (gmpy2, big integers, the parser)
                    results[worker.task] = ("timeout", "killed")
                    _count("worker_kills")
                    logger.warning(
                        "grading item %.200r ignored its %d s alarm: worker killed", tasks[worker.task], timeout_s
                    )
                    self._replace(worker)
                elif not worker.ready and now - worker.started > _START_TIMEOUT_S:
                    self._replace(worker, start_new=False)
                    self._start_failed("a grading worker did not start in time")
                    if not self.workers and time.monotonic() >= self.broken_until:
                        self._start_worker()
            if not self.workers:
                break
            wake = [deadline]
            for worker in self.workers:
                if worker.task is not None:
                    wake.append(worker.sent_at + timeout_s + _KILL_GRACE_S)
            timeout = max(0.0, min(wake) - time.monotonic()) + 0.01
            for conn in wait([w.recv_conn for w in self.workers], timeout=min(timeout, 1.0)):
                worker = next(w for w in self.workers if w.recv_conn is conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    message = None
                if message is None:  # the worker died (out of memory, killed from outside, crashed)
                    if worker.task is not None:
                        results[worker.task] = ("error", "worker died")
                    else:
                        self._start_failed("a grading worker exited before it was ready")
                    self._replace(worker, start_new=time.monotonic() >= self.broken_until)
                    continue
                if message[0] == "ready":
                    worker.ready = True
                    self.failed_starts = 0
                elif message[0] == "fatal":
                    self._replace(worker, start_new=False)
                    self.failed_starts = 2
                    self._start_failed(f"grading worker cannot load math-verify: {message[1]}")
                else:
                    task_id, status, value = message
                    results[task_id] = (status, value)
                    worker.task = None
                    if status == "memory":
                        self._replace(worker)
        return [r if r is not None else ("unresolved", None) for r in results]


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _run_tasks(tasks: list[tuple[str, tuple]], deadline: float) -> list[tuple[str, Any]]:
    """Run symbolic items on the shared pool (started here, lazily); counts and logs what goes wrong."""
    global _POOL
    if not tasks:
        return []
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():  # none yet, or inherited through fork: start our own
            _POOL = _Pool(_CONFIG["workers"])
        results = _POOL.run(tasks, deadline)
    for task, (status, value) in zip(tasks, results, strict=True):
        if status == "timeout":
            _count("timeouts")
            logger.warning("grading timed out on %.200r", task)
        elif status in ("error", "memory"):
            _count("failures")
            logger.warning("grading failed on %.200r: %s", task, value)
        elif status == "unresolved":
            _count("unresolved")
    return results


def shutdown_grading_pool() -> None:
    """Kill the worker processes (registered with ``atexit``; the next symbolic comparison starts a new pool)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and _POOL.pid == os.getpid():
            _POOL.shutdown()
        _POOL = None


def _after_fork_in_child() -> None:
    # The parent's workers, pipes and locks are the parent's: a forked child starts afresh (lazily).
    global _POOL, _POOL_LOCK, _STATS_LOCK
    _POOL, _POOL_LOCK, _STATS_LOCK = None, threading.Lock(), threading.Lock()


atexit.register(shutdown_grading_pool)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
