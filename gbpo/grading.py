"""Final-answer grading shared by the TTRL majority-vote reward, the accuracy reward and the evaluation.

Three public functions:

* :func:`extract_answer` -- the content of a completion's last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched),
  optionally its last number when it boxes nothing.
* :func:`answers_equivalent` -- is a predicted answer equivalent to the gold one.
* :func:`majority_vote` -- the TTRL pseudo-label of a group of answers: equivalence classes, the winning class, its
  share of the votes and which answers are in it (:class:`Vote`).

How two answers are compared, cheapest first:

1. **Canonical keys** (pure Python, no sympy): ``$``, ``\\%``, degrees, ``\\text{...}`` units, thin spaces and
   thousands separators, ``x =`` prefixes, choice letters ``(C)``, trailing punctuation, ``\\left``/``\\right`` and
   whitespace are removed, ``\\dfrac``/``\\tfrac`` become ``\\frac`` and ``\\frac12`` becomes ``\\frac{1}{2}``. Plain
   numbers (integers, decimals, ``025``, ``6.72e-5``, ``1.5\\times10^{3}``, ``\\frac{a}{b}``, ``a/b``, mixed numbers,
   ``0.\\overline{3}``) become exact :class:`fractions.Fraction` values. Equal keys or equal values are equivalent;
   two plain numbers with different values are not. Most answers never go further.
2. **Symbolic work** (math-verify and sympy) only between answers that are not both plain numbers, each answer parsed
   alone inside ``\\boxed{}`` (never a whole completion). A numeric expression (``\\frac{\\sqrt3}{2}``, ``2^{10}``)
   gets its value to 30 digits and numbers compare to 1e-12 relative, not math-verify's 6 digits (so ``\\pi`` is not
   ``3.1415927`` and ``1/3`` is not ``0.333333``); an expression with free symbols is compared by its value at a fixed
   point, also to 1e-12; everything else (sets, intervals, tuples, matrices, equations) goes to
   ``math_verify.verify`` with the gold answer (in a vote, the larger class) first.

Safety: math-verify times out with ``signal.alarm`` (main thread only, whole seconds) and sympy's C-level big-integer
work ignores the alarm, so symbolic work runs in a pool of worker processes: each item under an integer
``signal.alarm`` in the worker's main thread, each worker capped at ``memory_limit_mb`` of address space
(``RLIMIT_AS``), a worker still busy one second past the item timeout is killed and replaced, and each call has a
deadline after which the busy workers are killed and replaced and the unresolved comparisons fall back to the keys
(equivalent only when the keys are equal). A screen keeps power towers, huge exponents, factorials and binomials,
deeply nested brackets or fractions, unbalanced braces and strings over 1000 characters away from sympy altogether.
Results are cached across calls; failures are logged and counted (:func:`grading_stats`), never raised.

The workers are fresh interpreters (the "spawn" model: no inherited threads, locks or CUDA state), started with
:mod:`subprocess` and talking over :mod:`multiprocessing.connection` pipes. They are not
``multiprocessing.get_context("spawn").Process`` because spawn and forkserver re-run the parent's ``__main__`` module
in every child: under ``python -m gbpo.train`` each worker (and each replacement after a kill) would import TRL, torch
and transformers before it could grade anything. The pool starts lazily on the first symbolic comparison, is shared
by all threads of a process (one batch at a time), is recreated in a forked child, and is shut down at exit.
"""

from __future__ import annotations

import atexit
import decimal
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple

__all__ = [
    "Vote",
    "answers_equivalent",
    "clear_grading_caches",
    "configure_grading",
    "extract_answer",
    "grading_deadline",
    "grading_stats",
    "majority_vote",
    "shutdown_grading_pool",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_LAST_NUMBER_RE = re.compile(
    r"(?:(?<![\w)\]}.])-)?(?:(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?|(?<![\d.])\.\d+)"
)


def _match_brace(s: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (``\\{``, ``\\}`` and ``\\\\`` skipped), or None."""
    depth = 0
    i, n = open_idx, len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_answer(completion: str, fallback_last_number: bool = False) -> str | None:
    """The final answer of a completion: the content of its last ``\\boxed{...}`` or ``\\fbox{...}``.

    The box is found by brace matching, so nested braces (``\\boxed{\\frac{1}{2}}``) and escaped braces
    (``\\boxed{\\{1, 2\\}}``) are kept whole; ``\\boxed {x}`` (space before the brace) counts, ``\\boxedx`` does not.

    Args:
        completion: the completion's text.
        fallback_last_number: when no box gives an answer, return the text's last number instead (an integer, a
            decimal, a negative number or one with thousands separators such as ``1,000``, as written).

    Returns:
        The box's content with surrounding whitespace stripped, as written (not normalised). None when there is no
        box, when the last box is unclosed (a truncated completion), or when the last box is empty; in those cases,
        with ``fallback_last_number=True``, the last number of the text, or None when it has none.

    Raises:
        TypeError: ``completion`` is not a string (it names the argument and the type it got).
    """
    if not isinstance(completion, str):
        raise TypeError(f"extract_answer: completion must be a str, got {type(completion).__name__}")
    answer = None
    for match in reversed(list(_BOX_RE.finditer(completion))):
        pos = match.end()
        if pos < len(completion) and completion[pos] != "{":
            continue  # "\boxed x": not a box, look at the previous one
        close = _match_brace(completion, pos) if pos < len(completion) else None
        if close is not None:
            answer = completion[pos + 1 : close].strip() or None
        break  # the last box decides, even when it is unclosed
    if answer is None and fallback_last_number:
        numbers = _LAST_NUMBER_RE.findall(completion.replace("\u2212", "-"))
        answer = numbers[-1] if numbers else None
    return answer


# ---------------------------------------------------------------------------------------------------- canonical keys

_UNICODE = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\u2013": "-",  # en dash
        "\u2010": "-",
        "\u2011": "-",
        "\u00a0": " ",  # no-break space
        "\u2009": " ",  # thin space
        "\u202f": " ",  # narrow no-break space
        "\u2002": " ",
        "\u2003": " ",
        "\u00d7": r"\times ",
        "\u00b7": r"\cdot ",
        "\u22c5": r"\cdot ",
        "\u03c0": r"\pi ",
        "\u221e": r"\infty ",
        "\u00b0": "",  # degree sign
    }
)
_TEXT_CMD = r"\\(?:text|textrm|textnormal|textup|textsf|mbox|mathrm|textbf|mathbf|textit|mathit|mathsf|emph)"
_TEXT_UNWRAP_RE = re.compile(_TEXT_CMD + r"\s*\{([^{}]*)\}")
_UNIT_RE = re.compile(
    r"^(?P<body>.*?\S)\s*\\(?P<cmd>text|textrm|textnormal|mbox|mathrm)\s*\{(?P<unit>[^{}]*)\}"
    r"\s*(?:\^\s*(?:\{\s*\d\s*\}|\d))?\s*$",
    re.S,
)
_UNIT_WORD_RE = re.compile(r"^\s*[A-Za-z][A-Za-z .\-/]*$")
_CHOICE_RE = re.compile(r"(?P<wrap>" + _TEXT_CMD + r"\s*\{)?\s*\(\s*(?P<letter>[A-Ea-e])\s*\)\s*(?(wrap)\})")
_VAR_PREFIX_RE = re.compile(
    r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?\s*(?:=|\\in(?![A-Za-z]))\s*(?P<rest>.+)$", re.S
)
_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(?:(?:,|\s)\d{3})+(?:\.\d+)?$")
_SINGLE_BRACE_RE = re.compile(r"([\^_])\{\s*([A-Za-z0-9])\s*\}")
_BRACE_CMD_RE = re.compile(r"\\(frac|binom|sqrt)(?![A-Za-z])")

_INT = r"[+-]?\d+"
_DEC = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_NUM_PLAIN_RE = re.compile(_DEC)
_NUM_SCI_RE = re.compile(
    rf"(?P<m>{_DEC})(?:[eE](?P<e1>{_INT})|\\(?:times|cdot)10\^\{{?(?P<e2>{_INT})\}}?)|10\^\{{?(?P<e3>{_INT})\}}?"
)
_NUM_FRAC_RE = re.compile(rf"(?P<sign>[+-]?)\\frac\{{(?P<a>{_DEC})\}}\{{(?P<b>{_DEC})\}}")
_NUM_SLASH_RE = re.compile(rf"(?P<a>{_DEC})/(?P<b>{_DEC})")
_NUM_MIXED_RE = re.compile(r"(?P<sign>[+-]?)(?P<w>\d+)\\frac\{(?P<a>\d+)\}\{(?P<b>\d+)\}")
_NUM_REPEAT_RE = re.compile(r"(?P<sign>[+-]?)(?P<i>\d*)\.(?P<f>\d*)\\overline\{(?P<r>\d+)\}")
_BASE_RE = re.compile(r"\d+_\{?\w+\}?")
_MAX_EXP = 1000  # decimal exponents allowed in exact numbers
_MAX_LEN = 1000  # longer answers are compared by key only


class _Canon(NamedTuple):
    key: str  # whitespace-free canonical string: equal keys are equivalent answers
    clean: str  # the same normalisation with spaces kept: what math-verify parses
    number: Fraction | None  # exact value of a plain number
    screen: str | None  # why sympy must not see this answer (None: it may)


def _brace_args(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt2`` -> ``\\sqrt{2}``, ``\\frac\\pi2`` -> ``\\frac{\\pi}{2}``."""
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        m = _BRACE_CMD_RE.match(s, i) if s[i] == "\\" else None
        if m is None:
            if s[i] == "\\" and i + 1 < n:  # keep other commands and escapes whole
                out.append(s[i : i + 2])
                i += 2
            else:
                out.append(s[i])
                i += 1
            continue
        out.append(m.group(0))
        i = m.end()
        nargs = 1 if m.group(1) == "sqrt" else 2
        if nargs == 1:
            j = i
            while j < n and s[j] == " ":
                j += 1
            if j < n and s[j] == "[":
                close = s.find("]", j)
                if close < 0:
                    break
                out.append(s[j : close + 1])
                i = close + 1
        for _ in range(nargs):
            while i < n and s[i] == " ":
                i += 1
            if i >= n:
                break
            if s[i] == "{":
                close = _match_brace(s, i)
                if close is None:  # malformed: keep the rest as it is
                    out.append(s[i:])
                    return "".join(out)
                out.append("{" + _brace_args(s[i + 1 : close]) + "}")
                i = close + 1
            elif s[i] == "\\":
                cmd = re.match(r"\\(?:[A-Za-z]+|.)", s[i:])
                out.append("{" + cmd.group(0) + "}")
                i += len(cmd.group(0))
            elif s[i] in "}^_":
                break
            else:
                out.append("{" + s[i] + "}")
                i += 1
    return "".join(out)


def _strip_outer_braces(s: str) -> str:
    while s.startswith("{") and _match_brace(s, 0) == len(s) - 1:
        s = s[1:-1].strip()
    return s


def _normalize(s: str) -> str:
    """The common normalisation of an answer (spaces collapsed, not removed)."""
    s = s.translate(_UNICODE).strip()
    # a box inside the answer, math delimiters, dollars
    for _ in range(3):
        m = re.match(r"^\\(?:boxed|fbox)\s*\{", s)
        if m and _match_brace(s, m.end() - 1) == len(s) - 1:
            s = s[m.end() : -1].strip()
    s = re.sub(r"^\\[(\[]|\\[)\]]$", "", s).strip()
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(?:displaystyle|textstyle|scriptstyle)(?![A-Za-z])", " ", s)
    s = re.sub(r"\\(?:left|right|[bB]igg?[lr]?)(?![A-Za-z])\s*\.?", "", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\[dt]binom(?![A-Za-z])", r"\\binom", s)
    # degrees and percent
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\degree(?![A-Za-z])", "", s)
    s = re.sub(r"\\?%", "", s)
    # thin spaces and thousands separators
    s = s.replace("{,}", ",")
    s = re.sub(r",\s*\\!\s*", ",", s)
    s = s.replace("\\!", "")
    s = re.sub(r"\\\\|\\[,;: ]|\\q?quad(?![A-Za-z])|~", lambda m: m.group(0) if m.group(0) == "\\\\" else " ", s)
    s = re.sub(r"\s+", " ", s).strip()
    # trailing units: 7 \text{m}, 5\text{ cm}, 15\mbox{ cm}^2, 5.4 \text{ cents}
    while True:
        m = _UNIT_RE.match(s)
        if not m or not _UNIT_WORD_RE.match(m.group("unit")):
            break
        if m.group("cmd") == "mathrm" and len(m.group("unit").strip()) < 2:
            break  # \mathrm{i}, \mathrm{e} are constants, not units
        s = m.group("body").strip()
    # a choice letter, alone or before the choice's value: (C), \textbf{(C)}, \text{(C) } 12
    m = _CHOICE_RE.match(s)
    if m:
        rest = s[m.end() :].strip()
        s = rest if rest else m.group("letter").upper()
    # x = 3, y = 2x + 1, x \in [-2, 7]
    m = _VAR_PREFIX_RE.match(s)
    if m and "=" not in m.group("rest") and not s.startswith(("\\text", "\\frac", "\\sqrt", "\\pi")):
        s = m.group("rest").strip()
    s = _brace_args(s)
    s = _SINGLE_BRACE_RE.sub(r"\1\2", s)
    s = _strip_outer_braces(s)
    s = re.sub(r"(?:[.,;:]|\\\\)+$", "", s).strip()  # "5." -> "5", a trailing LaTeX line break
    if _THOUSANDS_RE.match(s):
        s = re.sub(r"[,\s]", "", s)
    if s.startswith("+"):
        s = s[1:].strip()
    if s.startswith("(") and s.endswith(")") and _NUM_PLAIN_RE.fullmatch(s[1:-1].strip()):
        s = s[1:-1].strip()  # (5) -> 5
    return s


def _to_fraction(key: str) -> Fraction | None:
    """The exact value of a whitespace-free key that is a plain number, else None."""
    try:
        if _NUM_PLAIN_RE.fullmatch(key):
            return Fraction(key)
        m = _NUM_SCI_RE.fullmatch(key)
        if m:
            exp = int(m.group("e1") or m.group("e2") or m.group("e3"))
            if abs(exp) > _MAX_EXP:
                return None
            return Fraction(m.group("m") or 1) * Fraction(10) ** exp
        m = _NUM_FRAC_RE.fullmatch(key)
        if m:
            value = Fraction(m.group("a")) / Fraction(m.group("b"))
            return -value if m.group("sign") == "-" else value
        m = _NUM_SLASH_RE.fullmatch(key)
        if m:
            return Fraction(m.group("a")) / Fraction(m.group("b"))
        m = _NUM_MIXED_RE.fullmatch(key)
        if m and 0 < int(m.group("a")) < int(m.group("b")):
            value = int(m.group("w")) + Fraction(int(m.group("a")), int(m.group("b")))
            return -value if m.group("sign") == "-" else value
        m = _NUM_REPEAT_RE.fullmatch(key)
        if m:
            i, f, r = m.group("i") or "0", m.group("f"), m.group("r")
            value = Fraction(int(i)) + Fraction(int(f or "0"), 10 ** len(f))
            value += Fraction(int(r), (10 ** len(r) - 1) * 10 ** len(f))
            return -value if m.group("sign") == "-" else value
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _group_end(s: str, i: int) -> int | None:
    """Index of the bracket closing the ``{``, ``(`` or ``[`` at ``i``."""
    if s[i] == "{":
        return _match_brace(s, i)
    opening, closing = s[i], {"(": ")", "[": "]"}[s[i]]
    depth = 0
    for j in range(i, len(s)):
        if s[j] == opening:
            depth += 1
        elif s[j] == closing:
            depth -= 1
            if depth == 0:
                return j
    return None


def _big_int_in(text: str, limit: int) -> bool:
    return any(len(d) > 9 or int(d) > limit for d in re.findall(r"\d+", text))


def _frac_depth(s: str, budget: list[int]) -> int:
    """How deeply ``\\frac`` nests in ``s`` (recursion bounded by the bracket-depth screen before it)."""
    best, i, n = 0, 0, len(s)
    while i < n and budget[0] > 0:
        budget[0] -= 1
        if s.startswith("\\frac", i):
            i += 5
            args_depth = 0
            for _ in range(2):
                if i < n and s[i] == "{":
                    close = _match_brace(s, i)
                    if close is None:
                        return best
                    args_depth = max(args_depth, _frac_depth(s[i + 1 : close], budget))
                    i = close + 1
            best = max(best, 1 + args_depth)
        else:
            i += 1
    return best


def _screen(s: str) -> str | None:
    """Why the normalised answer ``s`` must not reach sympy, or None.

    Blocks the inputs that hang or exhaust sympy, some in C code that no alarm interrupts: power towers and huge
    exponents, factorials and binomials of large or non-literal arguments, brackets nested over 50 deep, fractions
    nested over 10 deep (continued fractions take exponential time to parse), unbalanced braces and overlong strings.
    """
    if len(s) > _MAX_LEN:
        return "overlong"
    depth = peak = 0
    for c in s:
        if c in "([{":
            depth += 1
            peak = max(peak, depth)
        elif c in ")]}":
            depth -= 1
    if peak > 50:
        return "deep nesting"
    if _match_brace("{" + s + "}", 0) != len(s) + 1:
        return "unbalanced braces"
    if "\\uparrow" in s or "\\underbrace" in s:
        return "power tower"
    t = s.replace("**", "^")
    for m in re.finditer(r"\^", t):
        i = m.end()
        while i < len(t) and t[i] == " ":
            i += 1
        if i >= len(t):
            break
        if t[i] in "{([":
            end = _group_end(t, i)
            if end is None:
                return "power tower"
            exponent, after = t[i + 1 : end], end + 1
        else:
            tok = re.match(r"\\[A-Za-z]+|[+-]?[A-Za-z0-9.]", t[i:])
            exponent, after = (tok.group(0) if tok else t[i]), i + (len(tok.group(0)) if tok else 1)
        if "^" in exponent or "!" in exponent or re.match(r"\s*\^", t[after:]):
            return "power tower"
        if _big_int_in(exponent, 100_000) or re.search(r"[eE][+-]?\d{4,}", exponent):
            return "huge exponent"
    if re.search(r"\d[eE][+-]?\d{4,}", t):
        return "huge exponent"
    for m in re.finditer(r"!", t):
        before = t[: m.start()].rstrip()
        if not before:
            continue
        if before[-1].isdigit():
            digits = re.search(r"\d+$", before).group(0)
            if len(digits) > 4 or int(digits) > 1000:
                return "huge factorial"
        elif before[-1] in ")}]":
            opening = {")": "(", "}": "{", "]": "["}[before[-1]]
            depth, j = 0, len(before) - 1
            while j >= 0:
                if before[j] == before[-1]:
                    depth += 1
                elif before[j] == opening:
                    depth -= 1
                    if depth == 0:
                        break
                j -= 1
            inner = before[j + 1 : -1]
            if "^" in inner or "!" in inner or _big_int_in(inner, 1000):
                return "huge factorial"
    for m in re.finditer(r"\\binom\{([^{}]*)\}\{([^{}]*)\}|\\choose", t):
        args = t if m.group(1) is None else m.group(1) + " " + m.group(2)
        if "^" in args or "!" in args or _big_int_in(args, 5000):
            return "huge binomial"
    if "\\frac" in s and _frac_depth(s, [20_000]) > 10:
        return "deep fractions"
    if _BASE_RE.fullmatch(s):
        return "base subscript"  # 204_5 is not 204: compare as written
    return None


@lru_cache(maxsize=1 << 16)
def _canon(answer: str) -> _Canon:
    """Canonical key, cleaned text, exact value and screen verdict of one answer (cached: pure function)."""
    if len(answer) > _MAX_LEN:
        key = re.sub(r"\s+", "", answer)
        return _Canon(key, answer, None, "overlong")
    clean = _normalize(answer)
    key = re.sub(r"\s+", "", clean)
    key = _TEXT_UNWRAP_RE.sub(lambda m: m.group(1), key)  # \text{Evelyn} and Evelyn share a key
    number = _to_fraction(key)
    screen = None if number is not None else _screen(clean)
    return _Canon(key, clean, number, screen)


# ---------------------------------------------------------------------------------------------------- configuration

_CONFIG: dict[str, Any] = {
    "workers": max(1, min(2, os.cpu_count() or 1)),
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
_SIG_CACHE: dict[str, tuple] = {}
_PAIR_CACHE: dict[tuple[str, str], bool] = {}
_CACHE_LIMIT = 200_000


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
        workers: worker processes (default ``min(2, cpu_count)``); the pool is restarted when this changes.
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


def clear_grading_caches() -> None:
    """Forget every cached key and symbolic result (the counters and the pool are kept)."""
    _canon.cache_clear()
    _SIG_CACHE.clear()
    _PAIR_CACHE.clear()


# ---------------------------------------------------------------------------------------------------- worker side


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
    return bool(verify(g, p, timeout_seconds=None))


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


# ---------------------------------------------------------------------------------------------------- parent side

# The worker loads this file by path, not as ``gbpo.grading``: no package __init__, no relative imports, nothing of
# the parent's __main__; only the standard library and math-verify.
_WORKER_CODE = (
    "import importlib.util, json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "spec = importlib.util.spec_from_file_location('_gbpo_grading_worker', sys.argv[2]); "
    "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m); "
    "m._worker_main(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))"
)
_KILL_GRACE_S = 1.0
_START_TIMEOUT_S = 60.0


class _Worker:
    def __init__(self, memory_limit_mb: int):
        paths = [p for p in sys.path if isinstance(p, str)]
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, json.dumps(paths), os.path.abspath(__file__)]
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

# ---------------------------------------------------------------------------------------------------- comparisons

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


def _symbolic_pairs(pairs: list[tuple[_Canon, _Canon]], deadline: float) -> list[bool]:
    """Decide pairs (gold first) that keys and exact values could not; key-only (False) on any failure."""
    try:
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


def _local_decision(a: _Canon, b: _Canon) -> bool | None:
    """Equivalence from keys and exact values alone, or None when symbolic work is needed."""
    if a.key == b.key:
        return True
    if a.number is not None and b.number is not None:
        return a.number == b.number
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


@dataclass(frozen=True)
class Vote:
    """The outcome of a majority vote over one group's answers.

    Attributes:
        label: the winning class's answer as one of the raw answer strings (its most frequent spelling, the earliest
            on a tie), or None when no answer parsed.
        ratio: the winning class's size over the number of answers (None answers count in the denominator), in
            [0, 1]; 0.0 when no answer parsed.
        winners: one bool per answer, True when that answer is in the winning class (the TTRL reward).
    """

    label: str | None
    ratio: float
    winners: list[bool]


def majority_vote(answers: Iterable[str | None], *, deadline: float | None = None) -> Vote:
    """Majority vote over equivalent answers (the TTRL pseudo-label).

    Answers are merged into classes by canonical key and exact value, then by symbolic equivalence between class
    representatives (the larger class as gold); the largest class wins and ties go to the class whose first member
    comes first. None (and empty) answers never win but count in the ratio's denominator.

    Args:
        answers: one extracted answer per completion (str, or None for a completion without an answer); any iterable.
        deadline: a deadline from `grading_deadline` shared by every vote of one reward call (default: one of
            ``batch_deadline_s`` for this vote alone); symbolic merges not done by then fall back to the keys.

    Returns:
        A :class:`Vote`; when every answer is None: ``Vote(None, 0.0, [False] * len(answers))``.

    Raises:
        ValueError: ``answers`` is empty.
        TypeError: ``answers`` is None or a single string rather than an iterable of answers, or an answer is neither a
            string nor None (names its index and type).
    """
    if answers is None or isinstance(answers, str):
        raise TypeError(
            f"majority_vote: answers must be an iterable of answers (str or None, one per completion), got "
            f"{type(answers).__name__}; pass e.g. [extract_answer(text) for text in completions]"
        )
    answers = list(answers)
    if not answers:
        raise ValueError("majority_vote: answers is empty; a vote needs at least one answer (None for unanswered)")
    for i, a in enumerate(answers):
        if a is not None and not isinstance(a, str):
            raise TypeError(f"majority_vote: answers[{i}] must be a str or None, got {type(a).__name__}")

    # classes by key or exact value, in order of first appearance
    class_of: dict[Any, int] = {}
    members: list[list[int]] = []
    canons: list[_Canon] = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        c = _canon(a)
        if not c.key:
            continue
        ident = ("n", c.number) if c.number is not None else ("k", c.key)
        k = class_of.get(ident)
        if k is None:
            k = class_of[ident] = len(members)
            members.append([])
            canons.append(c)
        members[k].append(i)
    if not members:
        return Vote(None, 0.0, [False] * len(answers))

    # merge classes that only sympy can tell are equivalent
    parent = list(range(len(members)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    pending: list[tuple[int, int]] = []
    for x in range(len(members)):
        for y in range(x + 1, len(members)):
            local = _local_decision(canons[x], canons[y])
            if local is None:
                gold, pred = (x, y) if len(members[x]) >= len(members[y]) else (y, x)
                pending.append((gold, pred))
            elif local:  # equal keys and values were merged above; kept for completeness
                parent[find(y)] = find(x)
    n_pairs = len(members) * (len(members) - 1) // 2
    if n_pairs > len(pending):
        _count("key_decisions", n_pairs - len(pending))
    if pending:
        pending.sort(key=lambda p: -(len(members[p[0]]) + len(members[p[1]])))
        cap = _CONFIG["max_symbolic_pairs"]
        if len(pending) > cap:
            _count("pair_cap", len(pending) - cap)
            logger.warning("majority_vote: %d symbolic pairs over the cap of %d use keys only", len(pending) - cap, cap)
            pending = pending[:cap]
        deadline = grading_deadline() if deadline is None else deadline
        verdicts = _symbolic_pairs([(canons[g], canons[p]) for g, p in pending], deadline)
        for (g, p), same in zip(pending, verdicts, strict=True):
            if same:
                root_g, root_p = find(g), find(p)
                if root_g != root_p:
                    parent[max(root_g, root_p)] = min(root_g, root_p)

    merged: dict[int, list[int]] = {}
    for k in range(len(members)):
        merged.setdefault(find(k), []).append(k)
    # the winner: most votes, then earliest first member (class k's first member precedes class k+1's)
    best = max(merged, key=lambda r: (sum(len(members[k]) for k in merged[r]), -min(merged[r])))
    winning = merged[best]
    in_class = sorted(i for k in winning for i in members[k])
    spellings = Counter(answers[i] for i in in_class)
    label = max(in_class, key=lambda i: (spellings[answers[i]], -i))  # most frequent spelling, earliest on a tie
    chosen = set(in_class)
    return Vote(answers[label], len(in_class) / len(answers), [i in chosen for i in range(len(answers))])
