"""Reports of evaluation runs: ``results.json`` reading, the markdown summary, the pass@k/maj@k plot, comparisons."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REFERENCES",
    "compare",
    "load_results",
    "plot_pass_at_k",
    "reference_rows",
    "render_summary",
    "write_outputs",
]

logger = logging.getLogger(__name__)

RESULTS_FILE, SUMMARY_FILE, PLOT_FILE = "results.json", "summary.md", "pass_at_k.png"


REFERENCES: list[dict[str, Any]] = [
    {
        "match": "qwen2.5-math-1.5b",
        "exclude": ("instruct",),
        "source": "TTRL paper v2, avg@16, T=0.6, top_p 0.95, 3072 tokens",
        "num_samples": 16,
        "rows": {
            "Qwen2.5-Math-1.5B base": {"aime24": 7.7, "amc": 28.6, "math500": 32.7},
            "Qwen2.5-Math-1.5B after TTRL": {"aime24": 15.8, "amc": 48.9, "math500": 73.0},
        },
    },
]
"""Published pass@1 numbers (percent) keyed by a lower-case substring of the model id or path (``match``), unless the
id also contains one of ``exclude``; ``rows`` maps a row label to ``{benchmark: pass@1 in percent}``."""


def reference_rows(model_id: str | None) -> list[tuple[str, dict[str, float], int]]:
    """The published reference rows for a model id or path, ``[]`` when none applies.

    Args:
        model_id: a hub id, short id or path (matched case-insensitively against :data:`REFERENCES`); None gives ``[]``.

    Returns:
        ``[(label, {benchmark: pass@1 in percent}, num_samples), ...]``; each label ends with the source in
        parentheses.
    """
    if not model_id:
        return []
    name = model_id.lower()
    rows = []
    for ref in REFERENCES:
        if ref["match"] in name and not any(x in name for x in ref.get("exclude", ())):
            rows.extend(
                (f"{label} ({ref['source']})", values, ref["num_samples"]) for label, values in ref["rows"].items()
            )
    return rows


def load_results(directory: str | Path) -> dict[str, Any]:
    """Read ``results.json`` from an evaluation output directory.

    Raises:
        ValueError: the directory does not exist, has no ``results.json``, or it is not a results file
            (unreadable JSON, or no ``benchmarks`` with ``metrics``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory.")
    path = directory / RESULTS_FILE
    if not path.is_file():
        raise ValueError(f"{directory} has no {RESULTS_FILE}: it is not a `gbpo.evaluate` output directory.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Could not read {path}: {e}") from e
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benchmarks, dict) or not all(isinstance(b, dict) and "metrics" in b for b in benchmarks.values()):
        raise ValueError(f"{path} is not an evaluation results file (no benchmarks with metrics).")
    return data


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def render_summary(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Markdown report: the runs' settings, then one table per benchmark with one row per run.

    Columns: problems, samples n, ``avg@n`` with its 95% interval, ``pass@k`` and ``maj@k`` for every k any run has
    (``–`` where a run lacks it), all in percent. Published reference rows (:func:`reference_rows`, from each run's
    ``config["model"]``) follow the runs, in the avg@n and pass@1 columns.

    Args:
        runs: ``[(label, results), ...]`` with results as written to ``results.json`` (``config`` and
            ``benchmarks[name]["metrics"]``).

    Returns:
        The markdown text.
    """
    lines = ["# Evaluation summary", ""]
    lines += ["| run | model | backend | T | top_p | max new tokens | seed |", "|---|---|---|---|---|---|---|"]
    for label, res in runs:
        c = res.get("config", {})
        lines.append(
            f"| {label} | {c.get('model', '?')} | {c.get('backend', '?')} | {c.get('temperature', '?')} | "
            f"{c.get('top_p', '?')} | {c.get('max_new_tokens', '?')} | {c.get('seed', '?')} |"
        )
    lines += [
        "",
        "Accuracies in percent. avg@n: mean accuracy of the n samples per problem (= pass@1), with a 95% interval from "
        "the normal approximation over problems (mean ± 1.96·s/√P). pass@k: unbiased estimator (Chen et al. 2021). "
        "maj@k: majority vote over the first k samples.",
    ]
    names: list[str] = []
    for _, res in runs:
        names += [b for b in res["benchmarks"] if b not in names]
    references: dict[str, tuple[dict[str, float], int]] = {}
    for _, res in runs:
        for ref_label, values, ref_n in reference_rows(res.get("config", {}).get("model")):
            references.setdefault(ref_label, (values, ref_n))
    for name in names:
        present = [(label, res["benchmarks"][name]["metrics"]) for label, res in runs if name in res["benchmarks"]]
        ks = sorted({k for _, m in present for k in m["ks"]})
        header = ["run", "problems", "n", "avg@n [95% CI]"] + [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks]
        lines += ["", f"## {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label, m in present:
            n = m["num_samples"]
            avg = f"{_pct(m[f'avg@{n}'])} [{_pct(m[f'avg@{n}_ci95_low'])}, {_pct(m[f'avg@{n}_ci95_high'])}]"
            cells = [label, str(m["num_problems"]), str(n), avg]
            cells += [_pct(m.get(f"pass@{k}")) for k in ks] + [_pct(m.get(f"maj@{k}")) for k in ks]
            lines.append("| " + " | ".join(cells) + " |")
        for ref_label, (values, ref_n) in references.items():
            if name in values:
                value = f"{values[name]:.1f}"
                cells = (
                    [f"*{ref_label}*", "", str(ref_n), value] + [value if k == 1 else "" for k in ks] + [""] * len(ks)
                )
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_pass_at_k(runs: Sequence[tuple[str, Mapping[str, Any]]], path: str | Path) -> Path:
    """Plot pass@k (solid) and maj@k (dashed) against k (log2 axis), one panel per benchmark, one colour per run.

    Published reference pass@1 numbers (:func:`reference_rows`) are drawn as stars at k = 1. Uses matplotlib's
    object-oriented Agg canvas (no pyplot, the global backend is untouched).

    Args:
        runs: ``[(label, results), ...]`` as for :func:`render_summary`.
        path: the PNG file to write.

    Returns:
        ``path`` as a Path.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names: list[str] = []
    for _, res in runs:
        names += [b for b in res["benchmarks"] if b not in names]
    fig = Figure(figsize=(4.2 * len(names), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, name in zip(axes, names, strict=True):
        for color, (label, res) in zip(colors, runs, strict=True):
            if name not in res["benchmarks"]:
                continue
            m = res["benchmarks"][name]["metrics"]
            ks = m["ks"]
            ax.plot(ks, [100 * m[f"pass@{k}"] for k in ks], "-o", color=color, ms=3, label=f"{label} pass@k")
            ax.plot(ks, [100 * m[f"maj@{k}"] for k in ks], "--s", color=color, ms=3, label=f"{label} maj@k")
        seen: set[str] = set()
        for _, res in runs:
            for ref_label, values, _ in reference_rows(res.get("config", {}).get("model")):
                if name in values and ref_label not in seen:
                    seen.add(ref_label)
                    color = f"C{(len(runs) + len(seen) - 1) % 10}"
                    short = ref_label.split(" (")[0] + " (published)"
                    ax.plot([1], [values[name]], "*", ms=9, color=color, label=short)
        ax.set_xscale("log", base=2)
        ticks = sorted(
            {k for _, res in runs if name in res["benchmarks"] for k in res["benchmarks"][name]["metrics"]["ks"]}
        )
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        ax.set_title(name)
        ax.set_xlabel("k")
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def write_outputs(runs: Sequence[tuple[str, Mapping[str, Any]]], output_dir: str | Path) -> dict[str, Path]:
    """Write ``summary.md`` and ``pass_at_k.png`` for ``runs`` into ``output_dir`` (created if needed).

    The plot is skipped with a warning when matplotlib is not installed.

    Returns:
        ``{"summary": path, "plot": path}`` (``plot`` absent when skipped).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {"summary": output_dir / SUMMARY_FILE}
    written["summary"].write_text(render_summary(runs), encoding="utf-8")
    try:
        written["plot"] = plot_pass_at_k(runs, output_dir / PLOT_FILE)
    except ImportError:
        logger.warning("matplotlib is not installed: %s not written (pip install matplotlib).", PLOT_FILE)
    return written


def compare(directories: Sequence[str | Path], output_dir: str | Path) -> dict[str, Path]:
    """Render earlier evaluation runs side by side into ``output_dir`` (``summary.md``, ``pass_at_k.png``).

    Runs are labelled by directory name (the full path where two names clash).

    Raises:
        ValueError: no directories, or one that is not an evaluation output directory (see :func:`load_results`).
    """
    if not directories:
        raise ValueError("compare needs at least one result directory.")
    loaded = [load_results(d) for d in directories]
    names = [Path(d).resolve().name for d in directories]
    labels = [name if names.count(name) == 1 else str(d) for name, d in zip(names, directories, strict=True)]
    return write_outputs(list(zip(labels, loaded, strict=True)), output_dir)
