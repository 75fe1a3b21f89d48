"""The worker process of the symbolic grading pool: runs math-verify / sympy items under ``signal.alarm``.

This file is loaded by path in a fresh interpreter (see `gbpo.grading.pool`), not imported as part of ``gbpo``: it
must use only the standard library and math-verify (no relative imports, nothing from the package).
"""

from __future__ import annotations

import logging
import os
import signal
import time
import zlib
from multiprocessing.connection import Connection


class _ItemTimeout(BaseException):
    """Raised by the worker's alarm. A BaseException, so that math-verify's and sympy's ``except Exception`` blocks
    cannot swallow it."""


_FP_CACHE: dict[str, list] = {}


def _worker_parse(s: str) -> list:
    parsed = _FP_CACHE.get(s)
    if parsed is None:
        from math_verify import parse

        parsed = parse("\\boxed{" + s + "}", parsing_timeout=None)
        if len(_FP_CACHE) > 4096:
            _FP_CACHE.clear()
        _FP_CACHE[s] = parsed
    return parsed


def _symbol_value(name: str):
    import sympy

    h = zlib.crc32(name.encode("utf-8", "replace"))
    return sympy.Rational(1000 + (h * 7919) % 8999, 997 + (h * 104729) % 211)  # fixed, "generic" points


def _worker_signature(s: str) -> tuple:
    """("num", re, im): a finite numeric value to 30 digits; ("fp", re, im): an expression with free symbols at a
    fixed point; ("sym", kind): anything else math-verify parsed; ("none",): nothing parsed."""
    import sympy

    parsed = _worker_parse(s)
    expr = next((p for p in parsed if not isinstance(p, str)), None)
    if expr is None:
        return ("none",)
    if isinstance(expr, (sympy.MatrixBase, sympy.MatrixExpr)):
        return ("sym", "matrix")  # sympy.N recurses without end on an unevaluated matrix sum or product
    if isinstance(expr, sympy.Expr) and not isinstance(expr, sympy.Tuple):
        kind = "num" if expr.is_number else "fp"
        target = expr
        if kind == "fp":
            target = expr.subs({sym: _symbol_value(sym.name) for sym in expr.free_symbols})
        try:
            value = sympy.N(target, 30)
            re_, im_ = value.as_real_imag()
        except (TypeError, ValueError, AttributeError, ArithmeticError):
            return ("sym", type(expr).__name__)
        if all(p.is_Number and p.is_finite for p in (re_, im_)):
            return (kind, str(re_), str(im_))
    return ("sym", type(expr).__name__)


def _worker_verify(gold: str, pred: str) -> bool:
    from math_verify import verify

    g, p = _worker_parse(gold), _worker_parse(pred)
    if not g or not p:
        return False
    # an interval and the inequality that describes it are one answer, whichever is the gold
    return bool(verify(g, p, timeout_seconds=None, allow_set_relation_comp=True))


def _worker_block(seconds: float) -> None:
    """Diagnostic: sleep with SIGALRM blocked, like C code that never returns to the interpreter."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        time.sleep(seconds)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})


def _worker_alloc(n_bytes: int) -> int:
    """Diagnostic: allocate ``n_bytes`` (exercises the memory cap)."""
    return len(bytearray(n_bytes))


_WORKER_OPS = {"sig": _worker_signature, "verify": _worker_verify, "block": _worker_block, "alloc": _worker_alloc}


def _worker_main(fd_in: int, fd_out: int, memory_limit_mb: int) -> None:
    """Entry point of a worker process: cap memory, load math-verify, then run items until EOF."""
    import resource
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C and kills its workers
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # and the early preemption signal (a SLURM step signals all its pids)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})  # exec keeps the spawning thread's signal mask
    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    conn_in, conn_out = Connection(fd_in, writable=False), Connection(fd_out, readable=False)
    try:
        limit = memory_limit_mb * 1024 * 1024
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    except (ValueError, OSError):
        pass
    try:
        _worker_parse("1")
    except Exception as exc:  # math-verify missing or broken: report and stop
        conn_out.send(("fatal", repr(exc)[:500]))
        return
    conn_out.send(("ready", os.getpid()))
    fired = [False]

    def on_alarm(signum, frame):
        fired[0] = True
        raise _ItemTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    while True:
        try:
            message = conn_in.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, op, args, timeout_s = message
        fired[0] = False
        status, value = "ok", None
        try:
            try:
                signal.alarm(timeout_s)
                value = _WORKER_OPS[op](*args)
            finally:
                signal.alarm(0)
        except _ItemTimeout:
            status = "timeout"
        except MemoryError:
            status, value = "memory", "MemoryError"
        except RecursionError:
            status, value = "error", "RecursionError"
        except Exception as exc:
            status, value = "error", repr(exc)[:200]
        if fired[0] and status == "ok":
            status, value = "timeout", None  # the alarm fired but something swallowed it: the result is not trusted
        try:
            conn_out.send((task_id, status, value))
        except (OSError, ValueError):
            return
        if status == "memory":
            return  # the heap may be in a bad state: let the parent start a fresh worker
