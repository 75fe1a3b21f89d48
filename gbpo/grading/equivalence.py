"""Is a predicted answer equivalent to the gold one: keys and exact values first, then the symbolic pool."""

from __future__ import annotations

import decimal
import logging
import re
import time
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from .canonical import _Canon, _canon
from .pool import _CONFIG, _count, _run_tasks

logger = logging.getLogger("gbpo.grading")

_EQUATION_RE = re.compile(r"(?<![<>!=])=(?!=)")
_DECIMAL_RE = re.compile(r"[+-]?(\d*)\.(\d+)")
_FLOAT_DIGITS = 13
_FLOAT_TOL = Fraction(1, 10**12)
_SIG_CACHE: dict[str, tuple] = {}
_PAIR_CACHE: dict[tuple[str, str], bool] = {}
_CACHE_LIMIT = 200_000


def clear_grading_caches() -> None:
    """Forget every cached key and symbolic result (the counters and the pool are kept)."""
    _canon.cache_clear()
    _SIG_CACHE.clear()
    _PAIR_CACHE.clear()


_DEC = decimal.Context(prec=50, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
_REL_TOL = decimal.Decimal("1e-12")
_ABS_TOL = decimal.Decimal("1e-25")


def _to_decimal(x: Fraction | str) -> decimal.Decimal:
    if isinstance(x, Fraction):
        return _DEC.divide(decimal.Decimal(x.numerator), decimal.Decimal(x.denominator))
    return _DEC.create_decimal(x)  # sympy's 30-digit string, huge exponents included (never expanded)


def _close(a: tuple, b: tuple) -> bool:
    """Two (kind, re, im) values agree to 1e-12 relative (Decimal arithmetic: no float rounding, no overflow)."""
    try:
        ar, ai, br, bi = (_to_decimal(x) for x in (a[1], a[2], b[1], b[2]))
        diff = _DEC.add(abs(_DEC.subtract(ar, br)), abs(_DEC.subtract(ai, bi)))
        scale = max(_DEC.add(abs(ar), abs(ai)), _DEC.add(abs(br), abs(bi)))
        return diff <= max(_DEC.multiply(scale, _REL_TOL), _ABS_TOL)
    except (decimal.DecimalException, ValueError, TypeError):
        return False


def _signature(c: _Canon) -> tuple:
    if c.number is not None:
        return ("num", c.number, Fraction(0))
    if c.screen is not None:
        return ("key",)
    return _SIG_CACHE.get(c.clean, ("fail",))


def _decide_by_signature(a: tuple, b: tuple) -> bool | None:
    """True/False from two signatures, or None when math-verify must decide."""
    if a[0] in ("key", "none", "fail") or b[0] in ("key", "none", "fail"):
        return False
    if a[0] in ("num", "fp") and b[0] in ("num", "fp"):
        return a[0] == b[0] and _close(a, b)
    return None


def _store(cache: dict, key: Any, value: Any) -> None:
    if len(cache) > _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def _fetch_signatures(canons: Iterable[_Canon], deadline: float) -> None:
    need = []
    for c in canons:
        if c.number is None and c.screen is None and c.clean not in need:
            if c.clean in _SIG_CACHE:
                _count("cache_hits")
            else:
                need.append(c.clean)
    results = _run_tasks([("sig", (s,)) for s in need], deadline)
    for s, (status, value) in zip(need, results, strict=True):
        if status == "ok":
            _store(_SIG_CACHE, s, value)
        elif status != "unresolved":
            _store(_SIG_CACHE, s, ("fail",))  # a timeout or crash: it would time out again


def _is_equation(c: _Canon) -> bool:
    return _EQUATION_RE.search(c.clean) is not None


def _align(a: _Canon, b: _Canon) -> tuple[_Canon, _Canon]:
    """An equation is compared with an equation: ``2x+4y-3=0`` against ``y = -x/2 + 3/4`` keeps the ``y =`` that the
    canonical form strips from answers like ``y = 3``."""
    if _is_equation(a) and b.full != b.clean and not _is_equation(b):
        b = b._replace(clean=b.full, number=None)
    elif _is_equation(b) and a.full != a.clean and not _is_equation(a):
        a = a._replace(clean=a.full, number=None)
    return a, b


def _symbolic_pairs(pairs: list[tuple[_Canon, _Canon]], deadline: float) -> list[bool]:
    """Decide pairs (gold first) that keys and exact values could not; key-only (False) on any failure."""
    try:
        pairs = [_align(a, b) for a, b in pairs]
        _fetch_signatures([c for pair in pairs for c in pair], deadline)
        decided: list[bool | None] = [_decide_by_signature(_signature(a), _signature(b)) for a, b in pairs]
        need: list[tuple[str, str]] = []
        for (a, b), d in zip(pairs, decided, strict=True):
            if d is None and (a.clean, b.clean) not in _PAIR_CACHE and (a.clean, b.clean) not in need:
                need.append((a.clean, b.clean))
            elif d is None:
                _count("cache_hits")
        for pair, (status, value) in zip(need, _run_tasks([("verify", p) for p in need], deadline), strict=True):
            if status == "ok":
                _store(_PAIR_CACHE, pair, bool(value))
            elif status != "unresolved":
                _store(_PAIR_CACHE, pair, False)
        return [
            d if d is not None else _PAIR_CACHE.get((a.clean, b.clean), False)
            for (a, b), d in zip(pairs, decided, strict=True)
        ]
    except Exception:  # never let grading crash a training step
        _count("failures")
        logger.exception("symbolic grading failed; falling back to keys")
        return [False] * len(pairs)


def _float_printout(key: str) -> bool:
    """A decimal with 13 or more significant digits, as a program prints a float."""
    m = _DECIMAL_RE.fullmatch(key)
    return m is not None and len((m.group(1) + m.group(2)).lstrip("0")) >= _FLOAT_DIGITS


def _local_decision(a: _Canon, b: _Canon) -> bool | None:
    """Equivalence from keys and exact values alone, or None when symbolic work is needed.

    Two plain numbers are equal when their exact values are; a decimal written with 13 or more significant digits (a
    float printed by a program: ``0.0833333333333333``) is instead compared to 1e-12 relative, the tolerance of the
    symbolic comparison, so it equals ``\\frac{1}{12}`` as ``0.8660254037844386`` equals ``\\frac{\\sqrt3}{2}``; a
    rounded answer such as ``0.333333`` is still not ``1/3``.
    """
    if a.key == b.key:
        return True
    if a.number is not None and b.number is not None:
        if a.number == b.number:
            return True
        if _float_printout(a.key) or _float_printout(b.key):
            return abs(a.number - b.number) <= _FLOAT_TOL * max(abs(a.number), abs(b.number))
        return False
    if a.screen is not None or b.screen is not None:
        if a.screen is not None:
            _count("screened")
        if b.screen is not None:
            _count("screened")
        return False
    return None


def grading_deadline() -> float:
    """A deadline (``time.monotonic()`` seconds) ``batch_deadline_s`` from now, to share across several calls.

    Give it to every `majority_vote` / `answers_equivalent` call of one reward call (a whole generation batch), so that
    symbolic work for the whole batch is bounded by one deadline instead of one per group.
    """
    return time.monotonic() + _CONFIG["batch_deadline_s"]


def answers_equivalent(gold: str, predicted: str | None, *, deadline: float | None = None) -> bool:
    """Whether ``predicted`` is an answer equivalent to ``gold``.

    Canonical keys and exact numbers decide first (``142.0`` = ``142``, ``\\frac{284}{2}`` = ``142``, ``1,000`` =
    ``1000``, ``x=3`` = ``3``, ``7~\\text{m}`` = ``7``); otherwise the symbolic pool compares them with ``gold``
    first (numeric values to 1e-12, so ``\\pi`` is not ``3.1415927``). A comparison that fails, times out or is
    screened out falls back to the keys (False unless they are equal); it is counted and logged, never raised.

    Args:
        gold: the reference answer (e.g. a dataset's ``answer`` column).
        predicted: an extracted answer, or None when the completion gave none.
        deadline: a shared deadline from `grading_deadline` (default: ``batch_deadline_s`` from now); past it the
            symbolic comparison is not attempted and the keys decide.

    Returns:
        True when equivalent; False when not, when ``predicted`` is None, or when either answer is empty.

    Raises:
        TypeError: ``gold`` is not a string, or ``predicted`` is neither a string nor None (names the argument).
    """
    if not isinstance(gold, str):
        raise TypeError(f"answers_equivalent: gold must be a str, got {type(gold).__name__}")
    if predicted is not None and not isinstance(predicted, str):
        raise TypeError(f"answers_equivalent: predicted must be a str or None, got {type(predicted).__name__}")
    if predicted is None:
        return False
    a, b = _canon(gold), _canon(predicted)
    if not a.key or not b.key:
        return False
    local = _local_decision(a, b)
    if local is not None:
        _count("key_decisions")
        return local
    return _symbolic_pairs([(a, b)], grading_deadline() if deadline is None else deadline)[0]
