"""An independent recomputation of the evaluation metrics from graded records, for tests.

pass@k from binomials (``math.comb``), maj@k by clustering answers pairwise with ``answers_equivalent`` (largest
cluster wins, ties to the cluster seen first), ``correct`` re-graded from the samples: none of it calls
gbpo.evaluation's own metric code.
"""

from __future__ import annotations

import math

import pytest

from gbpo.grading import answers_equivalent, extract_answer


def vote_label(answers):
    clusters: list[list[str]] = []
    for a in answers:
        if a is None:
            continue
        for cluster in clusters:
            if answers_equivalent(cluster[0], a):
                cluster.append(a)
                break
        else:
            clusters.append([a])
    return max(clusters, key=len)[0] if clusters else None  # max keeps the first of equal sizes


def expected_metrics(records, n: int, ks) -> dict[str, float]:
    p = len(records)
    expected = {"pass@1": sum(sum(r["correct"]) / n for r in records) / p}
    for k in ks:
        expected[f"pass@{k}"] = sum(1 - math.comb(n - sum(r["correct"]), k) / math.comb(n, k) for r in records) / p
        wins = 0
        for r in records:
            label = vote_label(r["extracted"][:k])
            wins += label is not None and answers_equivalent(r["answer"], label)
        expected[f"maj@{k}"] = wins / p
    return expected


def check_metrics_independently(
    records, metrics, n: int, fallback_last_number: bool, prefix: str = "", lenient: bool = True
) -> None:
    """Re-grade every record and compare ``metrics`` (keys ``prefix + "pass@k"`` / ``"maj@k"``) with a recomputation.

    ``lenient``: the extraction the evaluation used (its default, ``answer_extraction="lenient"``, is True)."""
    for r in records:
        assert len(r["samples"]) == n
        read = [extract_answer(s, fallback_last_number=fallback_last_number, lenient=lenient) for s in r["samples"]]
        assert r["extracted"] == read
        assert r["correct"] == [answers_equivalent(r["answer"], a) for a in r["extracted"]]
    ks = [int(key.rsplit("@", 1)[1]) for key in metrics if key.startswith(prefix + "maj@")]
    assert ks, f"no maj@k among {sorted(metrics)}"
    for key, value in expected_metrics(records, n, ks).items():
        assert metrics[prefix + key] == pytest.approx(value, abs=1e-12), key
