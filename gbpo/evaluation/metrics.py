"""Benchmark metrics: unbiased pass@k (Chen et al. 2021), maj@k by majority vote, avg@n with a 95% interval.

All accuracies are fractions in [0, 1]; :func:`compute_metrics` turns per-problem records into the flat metrics dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..grading import ANSWER_EXTRACTION, Vote, answers_equivalent, extract_answer, majority_vote

__all__ = ["compute_metrics", "default_ks", "maj_at_k", "mean_ci95", "pass_at_k"]

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem (Chen et al. 2021): the chance that k of the n samples, drawn without
    replacement, include a correct one.

    ``1 - C(n - c, k) / C(n, k)``, computed stably as ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)`` (1.0 when
    ``n - c < k``).

    Args:
        n: number of samples (>= 1).
        c: number of correct samples, in 0..n.
        k: sample budget, in 1..n.

    Returns:
        A probability in [0, 1].

    Raises:
        ValueError: a non-integer or negative argument, ``k < 1``, ``k > n`` or ``c > n``.
    """
    _check_int("n", n, 1)
    _check_int("c", c, 0)
    _check_int("k", k, 1)
    if k > n:
        raise ValueError(f"pass@k needs k <= n: k={k} is larger than the number of samples n={n}.")
    if c > n:
        raise ValueError(f"pass@k needs c <= n: c={c} correct samples out of n={n}.")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def maj_at_k(answers: Sequence[str | None], gold: str, k: int) -> tuple[Vote, bool]:
    """Majority vote over the first ``k`` answers and whether its label is equivalent to ``gold``.

    Args:
        answers: extracted answers of one problem's samples, in sampling order (None for a sample without an answer).
        gold: the gold answer.
        k: how many of the first answers vote, in 1..len(answers).

    Returns:
        ``(vote, correct)``: the :class:`gbpo.grading.Vote` of ``answers[:k]`` (ties go to the answer seen first;
        None answers never win) and ``vote.label is not None and answers_equivalent(gold, vote.label)``.

    Raises:
        ValueError: ``k`` is not in 1..len(answers).
    """
    _check_int("k", k, 1)
    if k > len(answers):
        raise ValueError(f"maj@k needs k <= number of samples: k={k}, {len(answers)} answers.")
    vote = majority_vote(list(answers[:k]))
    return vote, vote.label is not None and answers_equivalent(gold, vote.label)


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% normal-approximation interval: ``mean +- 1.96 * s / sqrt(len(values))``.

    ``s`` is the sample standard deviation (ddof=1); with one value the interval is the point itself.

    Returns:
        ``(mean, low, high)``.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("mean_ci95 needs at least one value.")
    m = len(values)
    mean = math.fsum(values) / m
    if m == 1:
        return mean, mean, mean
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (m - 1))
    half = Z_95 * std / math.sqrt(m)
    return mean, mean - half, mean + half


def default_ks(num_samples: int) -> list[int]:
    """The k values reported for ``num_samples`` samples: 1, 2, 4, ... up to ``num_samples``, and ``num_samples``.

    Raises:
        ValueError: ``num_samples < 1``.
    """
    _check_int("num_samples", num_samples, 1)
    ks, k = [], 1
    while k <= num_samples:
        ks.append(k)
        k *= 2
    if ks[-1] != num_samples:
        ks.append(num_samples)
    return ks


def _check_ks(ks: Sequence[int] | None, num_samples: int) -> list[int]:
    if ks is None:
        return default_ks(num_samples)
    ks = sorted({_check_int("k", k, 1) for k in ks})
    if not ks:
        raise ValueError("ks is empty: give at least one k.")
    if ks[-1] > num_samples:
        raise ValueError(f"k={ks[-1]} is larger than the number of samples ({num_samples}); use k <= num_samples.")
    return ks


def check_answer_extraction(value: str, key: str = "answer_extraction") -> str:
    """Validate an answer-extraction mode: ``"strict"`` (boxed answers only) or ``"lenient"`` (see
    :func:`gbpo.grading.extract_answer`).

    Raises:
        ValueError: any other value, naming ``key`` and the allowed modes.
    """
    if value not in ANSWER_EXTRACTION:
        raise ValueError(f"{key} must be one of {', '.join(ANSWER_EXTRACTION)}, got {value!r}.")
    return value


def _score_problem(
    gold: str, texts: list[str], ks: list[int], fallback_last_number: bool, answer_extraction: str = "lenient"
) -> dict[str, Any]:
    lenient = answer_extraction == "lenient"
    extracted = [extract_answer(t, fallback_last_number=fallback_last_number, lenient=lenient) for t in texts]
    correct = [answers_equivalent(gold, a) for a in extracted]
    by_answer = {a: ok for a, ok in zip(extracted, correct, strict=True) if a is not None}
    votes = {}
    for k in ks:
        vote = majority_vote(extracted[:k])
        # the label is one of the extracted strings, already graded against gold
        votes[str(k)] = {
            "label": vote.label,
            "ratio": vote.ratio,
            "correct": vote.label is not None and by_answer[vote.label],
        }
    return {"extracted": extracted, "correct": correct, "num_correct": sum(correct), "votes": votes}


def compute_metrics(records: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Benchmark metrics from per-problem records (as in :func:`evaluate_benchmarks`'s output).

    Args:
        records: one per problem, each with ``correct`` (one bool per sample, n samples for every problem) and
            ``votes`` (``{str(k): {"correct": bool, ...}}`` for every k in ``ks``); ``completion_tokens`` and
            ``truncated`` (one per sample) are used when present.
        ks: the k values, each in 1..n.

    Returns:
        A flat dict: ``num_problems``, ``num_samples`` (n), ``ks``, ``avg@n`` (key with the number, e.g. ``avg@16``),
        ``avg@n_ci95_low`` / ``avg@n_ci95_high`` (normal approximation over problems, see :func:`mean_ci95`,
        clipped to [0, 1]),
        ``pass@k`` and ``maj@k`` for each k, ``answered_rate`` (fraction of samples with an extracted answer) and,
        when the records have them, ``mean_completion_tokens`` and ``truncated_rate`` (fraction of samples that hit
        the token limit). Accuracies are fractions in [0, 1].

    Raises:
        ValueError: no records, records with different sample counts, or a k outside 1..n.
    """
    if not records:
        raise ValueError("compute_metrics needs at least one problem record.")
    sizes = {len(r["correct"]) for r in records}
    if len(sizes) != 1:
        raise ValueError(f"Every problem must have the same number of samples; got sample counts {sorted(sizes)}.")
    n = sizes.pop()
    ks = _check_ks(ks, n)
    per_problem = [sum(r["correct"]) / n for r in records]
    mean, low, high = mean_ci95(per_problem)
    low, high = max(low, 0.0), min(high, 1.0)  # the normal interval can leave [0, 1]: clipped
    p = len(records)
    metrics: dict[str, Any] = {
        "num_problems": p,
        "num_samples": n,
        "ks": ks,
        f"avg@{n}": mean,
        f"avg@{n}_ci95_low": low,
        f"avg@{n}_ci95_high": high,
    }
    for k in ks:
        metrics[f"pass@{k}"] = math.fsum(pass_at_k(n, sum(r["correct"]), k) for r in records) / p
    for k in ks:
        metrics[f"maj@{k}"] = sum(bool(r["votes"][str(k)]["correct"]) for r in records) / p
    if all("extracted" in r for r in records):
        metrics["answered_rate"] = sum(a is not None for r in records for a in r["extracted"]) / (n * p)
    if all("completion_tokens" in r for r in records):
        metrics["mean_completion_tokens"] = sum(t for r in records for t in r["completion_tokens"]) / (n * p)
    if all("truncated" in r for r in records):
        metrics["truncated_rate"] = sum(bool(t) for r in records for t in r["truncated"]) / (n * p)
    return metrics
