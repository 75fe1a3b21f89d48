"""The TTRL majority vote over equivalent answers."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .canonical import _Canon, _canon
from .equivalence import _local_decision, _symbolic_pairs, grading_deadline
from .pool import _CONFIG, _count

logger = logging.getLogger("gbpo.grading")


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
