"""Reading the final answer out of a completion: the last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched), or in
lenient mode the answer of a completion that boxes nothing (the answer after "final answer is", the last math, the last
number)."""

from __future__ import annotations

import bisect
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


# lenient extraction: an anchor phrase, math spans, a last number written the way prose writes it
_ANCHOR_RE = re.compile(r"(?i)\b(?:final\s+answer(?:\s+is)?|answer\s+is|answer\s*:)\s*:?")
_MATH_RE = re.compile(
    r"(?<!\\)\$\$(?P<dd>(?:[^$]|\$(?!\$))+?)\$\$"  # $$ display $$ (may span lines)
    r"|(?<!\\)\\\[(?P<db>(?:[^\\]|\\(?![\[\]]))+?)\\\]"  # \[ display \] (content never opens another: linear)
    r"|(?<![\\$])\$(?!\$)(?P<d>(?:\\\$|[^$\n])+?)(?<!\\)\$"  # $ inline $ (one line)
    r"|(?<!\\)\\\((?P<p>(?:[^\\]|\\(?![()]))+?)\\\)",  # \( inline \)
    re.S,
)
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)|\n\s*\n|(?i:\bI hope\b)|<\|")
_CONCLUSION_RE = re.compile(r"(?i)\b(?:therefore|thus|hence|so|finally)\b,?")
_PROSE_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{4,}")
_TEXT_ARG_RE = re.compile(r"\\(?:text|mbox|mathrm|textbf|operatorname)\s*\{[^{}]*\}")
_NUMBER_UNIT_RE = re.compile(
    r"[$\u20ac\u00a3\u00a5]?\s*(?P<number>-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)"
    r"\s*[A-Za-z\u00b2\u00b3\u20ac$\u00a3\u00a5 .]*"
)
_IS_RE = re.compile(r"(?i)(?:\bis\b|\bare\b|\bequals\b|=)\s*:?")
_PROSE_NUMBER_RE = re.compile(
    r"(?<![\w.,])-?(?:\d{1,3}(?:[, ]\d{3})+(?![\d,])|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?(?![\d])|(?<![\w.])\.\d+"
)
# what may stand between the boxes of one closing answer set: commas, and/or, spacing, math delimiters
_SET_GLUE_RE = re.compile(
    r"^(?:\s|,|;|\$|\\\(|\\\)|\\\[|\\\]|\\q?quad|\\[,;: !]|~|and|or|\\text\s*\{\s*(?:and|or|,)?\s*\}|\\(?:text|mbox)"
    r"\s*\{\s*\}|\.)*$"
)
_SET_TAIL_RE = re.compile(r"^(?:\s|\$|\\\)|\\\]|\.|\*)*$")


def _boxes(text: str) -> list[tuple[int, int, str | None]]:
    """Every ``\\boxed``/``\\fbox`` as (start, end, content); content None for an unclosed box (end = len)."""
    found = []
    for match in _BOX_RE.finditer(text):
        pos = match.end()
        if pos >= len(text):
            found.append((match.start(), len(text), None))
            continue
        if text[pos] != "{":
            continue  # "\boxed x": not a box
        close = _match_brace(text, pos)
        if close is None:
            found.append((match.start(), len(text), None))
        else:
            found.append((match.start(), close + 1, text[pos + 1 : close].strip()))
    return found


def _closing_box_set(text: str, boxes: list[tuple[int, int, str | None]]) -> str | None:
    """The answer set of boxes that close the completion, joined only by separators, or the last box alone."""
    last_start, last_end, last = boxes[-1]
    if last is None or not last:
        return None
    if not _SET_TAIL_RE.match(text[last_end:]):
        return last
    run = [last]
    for (_, end, content), (start, _, _) in zip(reversed(boxes[:-1]), reversed(boxes[1:]), strict=True):
        if content is None or not content or not _SET_GLUE_RE.match(text[end:start]):
            break
        run.append(content)
    members = list(dict.fromkeys(reversed(run)))  # in order, duplicates dropped
    return ", ".join(members)


def _math_content(match: re.Match) -> str:
    return next(g for g in match.groups() if g is not None).strip()


def _in_span(pos: int, spans: list[re.Match]) -> bool:
    """Whether ``pos`` is inside one of ``spans`` (non-overlapping, in text order): a binary search."""
    i = bisect.bisect_right(spans, pos, key=lambda m: m.start()) - 1
    return i >= 0 and pos < spans[i].end()


def _is_bare(text: str) -> bool:
    """A short one-line text without prose (``\\frac{10}{9}``, ``1,000.99$``, ``f(y)``): the whole text answers."""
    return len(text) <= 100 and "\n" not in text and not _PROSE_WORD_RE.search(_TEXT_ARG_RE.sub("", text))


def _after_anchor(text: str, start: int, spans: list[re.Match], strong: bool) -> str | None:
    """The answer stated in the sentence after an anchor phrase ending at ``start``: after the sentence's last
    "is"/"are"/"=" outside math, its first math, else (bare math-like words, or, for a strong anchor, any short words)
    the words, else their first number; else the sentence's last math before that "is"."""
    end, pos = len(text), start
    while True:
        stop = _SENTENCE_END_RE.search(text, pos)
        if stop is None:
            break
        i = bisect.bisect_right(spans, stop.start(), key=lambda m: m.start()) - 1
        if i < 0 or stop.start() >= spans[i].end():
            end = stop.start()
            break
        pos = spans[i].end()
    inside = [m for m in spans if m.start() >= start and m.end() <= end]
    cut = start
    for m in _IS_RE.finditer(text, start, end):
        if not _in_span(m.start(), inside):
            cut = m.end()
    after = [m for m in inside if m.start() >= cut]
    if after:
        return _math_content(after[0]) or None
    words = text[cut:end].strip().strip("*").strip().strip("\"'").strip()
    words = re.sub(r"[.,;:!]+$", "", words).strip()
    unit = _NUMBER_UNIT_RE.fullmatch(words)
    if unit:
        return unit.group("number")  # 1,000.99m², $5, 3 hours
    if words and (_is_bare(words) or (strong and not re.search(r"\d", words) and len(words) <= 60)):
        return words
    number = _PROSE_NUMBER_RE.search(words)
    if number:
        return number.group(0).strip()
    before = [m for m in inside if m.end() <= cut]
    return (_math_content(before[-1]) or None) if before else None


def _last_outside(pattern: re.Pattern, text: str, spans: list[re.Match]) -> re.Match | None:
    """The last match of ``pattern`` that does not start inside a math span."""
    last = None
    for m in pattern.finditer(text):
        if not _in_span(m.start(), spans):
            last = m
    return last


def _lenient(text: str) -> str | None:
    stripped = text.strip()
    spans = list(_MATH_RE.finditer(text))
    if stripped and not spans and _is_bare(stripped):
        return stripped
    anchor = _last_outside(_ANCHOR_RE, text, spans)
    if anchor:
        answer = _after_anchor(text, anchor.end(), spans, strong=True)
        if answer:
            return answer
    last_math = next((c for c in (_math_content(m) for m in reversed(spans)) if c), None)
    conclusion = _last_outside(_CONCLUSION_RE, text, spans)
    if conclusion:
        sentence_end = _SENTENCE_END_RE.search(text, conclusion.end())
        # the concluding sentence answers when no math comes after it
        if not spans or spans[-1].start() < (sentence_end.start() if sentence_end else len(text)):
            answer = _after_anchor(text, conclusion.end(), spans, strong=False)
            if answer:
                return answer
    if last_math:
        return last_math
    numbers = _PROSE_NUMBER_RE.findall(text.replace("\u2212", "-"))
    return numbers[-1].strip() if numbers else None


ANSWER_EXTRACTION = ("strict", "lenient")  # the modes of extract_answer: lenient=False / lenient=True


def extract_answer(completion: str, fallback_last_number: bool = False, *, lenient: bool = False) -> str | None:
    """The final answer of a completion: the content of its last ``\\boxed{...}`` or ``\\fbox{...}``.

    The box is found by brace matching, so nested braces (``\\boxed{\\frac{1}{2}}``) and escaped braces
    (``\\boxed{\\{1, 2\\}}``) are kept whole; ``\\boxed {x}`` (space before the brace) counts, ``\\boxedx`` does not.

    Lenient mode (``lenient=True``, for real completions: the evaluation's default, like the Qwen2.5-Math and
    lm-evaluation-harness evaluators) reads, in this order:

    1. **Boxes.** The last box, as above; but several boxes that close the completion, separated only by commas,
       "and"/"or", spacing (``\\quad``) and math delimiters (``\\boxed{1}`` and ``\\boxed{-2}``; one box per ordered
       pair), are one answer set, returned as ``"1, -2"`` (their contents joined by ``", "``, repeats dropped). This is
       how a model answers a problem that asks for all solutions; boxes separated by other words (an intermediate
       result, "for part (a)") are not a set, and the last box answers.
    2. **An anchor phrase.** After the last "final answer is", "final answer:", "answer is" or "answer:" (any case,
       outside math): the first math (``$...$``, ``\\(...\\)``, ``\\[...\\]``, ``$$...$$``) of that sentence, else its
       words (after a last "is"/"=", so "The volume of $V$ is 120." gives ``120``), else their last number.
    3. **The last math**: the content of the last display or inline math (inline ``$...$`` does not span lines).
    4. **The last number**: an integer, decimal, ``1,000``-style or simple fraction ``2/3`` not glued to a letter.

    Args:
        completion: the completion's text.
        fallback_last_number: when no box gives an answer, return the text's last number instead (an integer, a
            decimal, a negative number or one with thousands separators such as ``1,000``, as written). Implied by
            ``lenient``.
        lenient: read answers that are not boxed, as described above (default False: boxes only).

    Returns:
        The answer with surrounding whitespace stripped, as written (not normalised). None when there is no box, when
        the last box is unclosed (a truncated completion), or when the last box is empty; in those cases, with
        ``fallback_last_number=True``, the last number of the text, or None when it has none; with ``lenient=True``,
        steps 2-4 above, or None when they find nothing.

    Raises:
        TypeError: ``completion`` is not a string (it names the argument and the type it got).
    """
    if not isinstance(completion, str):
        raise TypeError(f"extract_answer: completion must be a str, got {type(completion).__name__}")
    if lenient:
        boxes = _boxes(completion)
        answer = _closing_box_set(completion, boxes) if boxes else None
        if answer and not any(m.start() > boxes[-1][1] for m in _ANCHOR_RE.finditer(completion)):
            return answer
        return _lenient(completion) or answer
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
