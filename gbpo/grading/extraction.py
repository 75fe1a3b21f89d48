"""Reading the final answer out of a completion: the last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched)."""

from __future__ import annotations

import re

__all__ = ["extract_answer"]

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
