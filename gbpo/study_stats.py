"""Statistics over seeds for a study's report: a cell's spread, and two methods compared seed by seed.

A study cell (one method at one setting) has one number per seed (e.g. avg@8 after training). The 95% interval that
the evaluation gives a single run is sampling over benchmark problems; it says nothing about how much a run changes
with its seed, which is what decides whether one method beats another. So:

* :func:`seed_summary`: mean, sample standard deviation (n - 1) and every seed's value;
* :func:`paired_difference`: method A minus method B, paired by seed (the same seed gives both methods the same
  prompts in the same order and the same first generation), with

  - a bootstrap 95% interval of the mean difference over seeds (``scipy.stats.bootstrap``, percentile method,
    resampling the seeds' differences; a fixed generator, so a report rebuilds byte for byte), and
  - the exact two-sided sign-flip permutation p (``scipy.stats.permutation_test`` with
    ``permutation_type="samples"``: under the null hypothesis that the method does not matter, each seed's pair is
    equally likely either way round, so the ``2**n`` sign flips of the differences are equally likely; p counts the
    flips whose mean difference is at least as extreme as the observed one, both tails). With n pairs the smallest
    possible p is ``2 / 2**n``: 6 pairs all in one direction give 2/64 = 0.031, 3 pairs 2/8 = 0.25, so fewer than
    5 seeds can never decide at 0.05.

Sources: Efron & Tibshirani, "An Introduction to the Bootstrap" (1993), ch. 13 (percentile interval) and 15.4
(paired permutation test); Fisher, "The Design of Experiments" (1935), 21 (the sign-flip test of paired differences).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ALPHA", "paired_difference", "seed_summary"]

# A difference is "decided" when its two-sided permutation p is at most this.
ALPHA = 0.05
# Bootstrap resamples of the seeds' differences; the generator's seed (fixed so that a report rebuilds identically).
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0


def _finite(values: Sequence[float], name: str) -> list[float]:
    out = [float(v) for v in values]
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name} must be finite numbers, got {bad}.")
    return out


def seed_summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation over seeds and the values themselves.

    Args:
        values: one number per seed (any unit; the report passes percentages).

    Returns:
        ``{"n": int, "mean": float, "sd": float | None, "values": list[float]}``; ``sd`` (n - 1 in the denominator)
        is None for a single seed, where no spread can be measured.

    Raises:
        ValueError: no values, or a value that is not a finite number.
    """
    values = _finite(values, "values")
    if not values:
        raise ValueError("values is empty: a cell needs at least one finished run.")
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"n": len(values), "mean": statistics.fmean(values), "sd": sd, "values": values}


def paired_difference(a: Sequence[float], b: Sequence[float], *, alpha: float = ALPHA) -> dict[str, Any]:
    """Method A minus method B over seeds paired by position: mean, bootstrap 95% interval, exact permutation p.

    Args:
        a, b: one number per seed, the same seeds in the same order (``a[i]`` and ``b[i]`` share seed i).
        alpha: the level at which a difference counts as decided (two-sided p <= alpha).

    Returns:
        ``{"n", "mean", "differences", "ci95": (low, high) | None, "p": float | None, "decided": bool}``: ``ci95``
        and ``p`` are None with fewer than 2 pairs (no spread, no test); when every difference is the same number
        the interval is that number (a bootstrap of identical values has no spread) and p is still the exact
        permutation p (1.0 when they are all 0).

    Raises:
        ValueError: ``a`` and ``b`` differ in length, are empty, or hold a value that is not a finite number.
    """
    from scipy import stats

    a, b = _finite(a, "a"), _finite(b, "b")
    if len(a) != len(b):
        raise ValueError(f"a and b must pair seed by seed: got {len(a)} and {len(b)} values.")
    if not a:
        raise ValueError("a and b are empty: a paired difference needs at least one seed run by both methods.")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    result: dict[str, Any] = {
        "n": len(differences),
        "mean": statistics.fmean(differences),
        "differences": differences,
        "ci95": None,
        "p": None,
        "decided": False,
    }
    if len(differences) < 2:
        return result
    x, y = np.asarray(a), np.asarray(b)
    test = stats.permutation_test(
        (x, y),
        lambda u, v, axis: np.mean(u - v, axis=axis),
        permutation_type="samples",
        alternative="two-sided",
        n_resamples=math.inf,  # exact: all 2**n sign flips
    )
    p = float(min(test.pvalue, 1.0))
    if max(differences) == min(differences):
        ci = (differences[0], differences[0])
    else:
        boot = stats.bootstrap(
            (np.asarray(differences),),
            np.mean,
            confidence_level=0.95,
            n_resamples=BOOTSTRAP_RESAMPLES,
            method="percentile",
            rng=np.random.default_rng(BOOTSTRAP_SEED),
        )
        ci = (float(boot.confidence_interval.low), float(boot.confidence_interval.high))
    result.update(ci95=ci, p=p, decided=p <= alpha)
    return result
