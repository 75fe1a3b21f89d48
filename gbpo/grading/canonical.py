"""Canonical forms of answers (pure Python, no sympy): a whitespace-free key, the cleaned text math-verify parses, the
exact value of a plain number, and the screen that keeps pathological answers away from sympy."""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

from .extraction import _match_brace

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

_DOUBLED_CMD_RE = re.compile(
    r"\\\\(?=(?:le|ge|leq|geq|lt|gt|neq|ne|frac|dfrac|tfrac|sqrt|left|right|pi|cdot|times|infty|in|cup|cap|text|pm)"
    r"(?![A-Za-z]))"
)
_TRIG_RE = re.compile(r"\\(?:sin|cos|tan|cot|sec|csc)(?![A-Za-z])")
_TRIG_DEGREES_RE = re.compile(
    r"(\d+(?:\.\d+)?)\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\degree(?![A-Za-z]))"
)
_WORDS_RE = re.compile(r"[A-Za-z][A-Za-z' \-]*")
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen".split()
    )
}
_NUMBER_WORDS.update(
    {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
)
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}


def _number_in_words(text: str) -> int | None:
    """``twenty-one`` -> 21, ``one hundred and five`` -> 105; None unless the whole text is a number in words."""
    total = current = 0
    words = [w for w in re.split(r"[\s\-]+", text.lower()) if w and w != "and"]
    if not words:
        return None
    for w in words:
        if w in _NUMBER_WORDS:
            current += _NUMBER_WORDS[w]
        elif w == "hundred":
            current = (current or 1) * 100
        elif w in _SCALES:
            total += (current or 1) * _SCALES[w]
            current = 0
        else:
            return None
    return total + current


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
    full: str  # ``clean`` with a stripped ``y =`` / ``x \\in`` prefix put back (what an equation is compared with)


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


def _normalize(s: str) -> tuple[str, str]:
    """The common normalisation of an answer (spaces collapsed, not removed), and the ``y =`` prefix it stripped."""
    s = s.translate(_UNICODE).strip()
    s = s.replace("**", "^")  # x**2 is x^2
    if "\\begin" not in s:  # \\le written for \le (doubly escaped LaTeX); a real line break is not before a command
        s = _DOUBLED_CMD_RE.sub(r"\\", s)
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
    # degrees: inside a trigonometric function a value in degrees (sin 30° = 1/2), elsewhere a unit to drop
    if _TRIG_RE.search(s):
        s = _TRIG_DEGREES_RE.sub(r"(\1\\pi/180)", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\degree(?![A-Za-z])", "", s)
    s = re.sub(r"\\?%", "", s)
    # thin spaces and thousands separators
    s = re.sub(r"\s*\{\s*,\s*\}\s*", ",", s)  # 10{,}455 and 14 {, }916: a thousands separator
    s = re.sub(r"\{\s*\.\s*\}", ".", s)  # 3{.}5
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
    prefix = ""
    m = _VAR_PREFIX_RE.match(s)
    if m and "=" not in m.group("rest") and not s.startswith(("\\text", "\\frac", "\\sqrt", "\\pi")):
        prefix = s[: m.start("rest")].strip()
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
    return s, prefix


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
        return _Canon(key, answer, None, "overlong", answer)
    clean, prefix = _normalize(answer)
    words = _TEXT_UNWRAP_RE.sub(lambda m: m.group(1), clean).strip()
    key = re.sub(r"\s+", "", words)  # \text{Evelyn} and Evelyn share a key
    number = _to_fraction(key)
    if number is None and _WORDS_RE.fullmatch(words):
        value = _number_in_words(words)
        if value is not None:
            number = Fraction(value)  # three = 3, twenty-one = 21
        elif len(key) >= 3:
            key = key.lower()  # text answers: Even = even (single letters keep their case: E is not e)
    screen = None if number is not None else _screen(clean)
    return _Canon(key, clean, number, screen, f"{prefix} {clean}" if prefix else clean)
