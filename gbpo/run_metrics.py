"""A finished run's logged metrics (``output_dir/metrics.jsonl``, one JSON object a line, as `gbpo.train` writes the
Trainer's ``log_history``), read the one way `gbpo.compare` and `gbpo.study_report` both use."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["metric_series", "read_metrics"]


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The entries of ``run_dir/metrics.jsonl`` in order (blank lines skipped).

    Raises:
        FileNotFoundError: the run wrote no ``metrics.jsonl``.
        json.JSONDecodeError: a line is not JSON.
    """
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def metric_series(entries: Sequence[Mapping[str, Any]], keys: Sequence[str], loss: str = "") -> list[tuple[int, float]]:
    """``(step, value)`` of the first of ``keys`` that the entries with a ``step`` log as a number, non-finite values
    left out; ``"{loss}"`` in a key is replaced by ``loss`` (a run's loss type). Empty when none is logged."""
    for key in keys:
        key = key.format(loss=loss)
        points = [(e["step"], e[key]) for e in entries if isinstance(e.get(key), int | float) and "step" in e]
        if points:
            return [(s, float(v)) for s, v in points if math.isfinite(float(v))]
    return []
