"""The study sections of `gbpo.compare`'s report: statistics over seeds, provenance per cell, and figure (a).

`gbpo.compare.write_report` calls :func:`study_sections` with the settings and the finished runs' summaries. What it
writes (every number from the runs' ``metrics.jsonl`` and ``run.json``; the statistics are `gbpo.study_stats`):

* per group and method (a cell): n, mean, seed standard deviation and every seed's value of avg@k, maj@k and pass@k
  after training; the mean over the run's steps of the fraction of loss tokens outside ``[1 - eps, 1 + eps_high]``
  (``gbpo/outside_bounds/region_mean``); the smallest ratio of any step; per run, how many of its generation groups
  had a correct majority label (TTRL's lock-in measure; from ``ttrl/label_accuracy`` x the groups of a generation
  batch); trained completions a minute (see `run_extras`); the machines and commits its runs came from, flagged when
  they differ, "provenance not recorded" for runs without ``run.json``;
* for each pair of methods in the settings' ``paired`` (e.g. ``[gbpo, grpo]``) and each group where both have runs:
  A minus B paired by seed, its bootstrap 95% interval, the exact two-sided sign-flip permutation p, and in words
  whether it is decided (p <= 0.05);
* which methods of a group ran one trajectory (the same loss and grad norm at every step, seed by seed), and a
  group's ``note`` and ``shown_as`` cells (a method not run in a group, shown with another method's runs and the
  reason the settings give);
* figure (a), ``<sweep>_avg.png``: avg@k after training against the sweep key, per method the mean over seeds with
  bars of one seed standard deviation and every seed's point, drawn only at the sweep values where the method has
  runs (a line joins two values only when no value between them lacks runs).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .provenance import code_tree, read_run_json
from .run_metrics import metric_series, read_metrics
from .study_stats import ALPHA, paired_difference, seed_summary

__all__ = ["METRICS", "provenance_cell", "run_extras", "same_trajectories", "study_sections", "sweep_figure"]

# (summary key, label) of the numbers compared over seeds; the summaries give fractions, the report percent.
METRICS = (("eval_pass@1", "avg@k"), ("eval_maj@k", "maj@k"), ("eval_pass@k", "pass@k"))
Summaries = Mapping[tuple[str, str, int], Mapping[str, Any]]


def run_extras(run_dir: str | Path, groups_per_batch: int | None) -> dict[str, Any]:
    """The study's per-run numbers beyond `gbpo.compare.summarise_run`, from the run's ``metrics.jsonl``.

    Args:
        run_dir: the run's directory.
        groups_per_batch: prompts (groups) per generation batch, to turn ``ttrl/label_accuracy`` (the fraction of a
            batch's groups whose majority label is right) into a count; None: the count is not given.

    Returns:
        ``{"outside_bounds_mean": mean over steps of gbpo/outside_bounds/region_mean (None: not logged),
        "ratio_min": smallest gbpo/ratio/min of any step (None: not logged), "correct_majority": groups with a
        correct majority label summed over the run's generation batches (None: not known), "groups": groups in
        all, "trajectory": [(loss, grad_norm) per step], "completions_per_minute": distinct completions that
        entered the loss per minute of training (steps x the mean of ``rows/trained_per_step``, all processes, /
        ``num_iterations``, over run.json's ``train_seconds``, which leaves out evaluation, model load and start-up;
        None without run.json), as benchmarks/cpu.py counts them}``.
    """
    entries = read_metrics(run_dir)
    outside, smallest, labels = (
        [v for _, v in metric_series(entries, (key,))]
        for key in ("gbpo/outside_bounds/region_mean", "gbpo/ratio/min", "ttrl/label_accuracy")
    )
    rows = [v for _, v in metric_series(entries, ("rows/trained_per_step",))]
    record = read_run_json(run_dir) or {}
    seconds = (record.get("time") or {}).get("train_seconds")
    iterations = (record.get("config") or {}).get("num_iterations")
    steps = max((int(e["step"]) for e in entries if "loss" in e and "step" in e), default=0)
    per_minute = None
    if rows and seconds and iterations and steps:
        per_minute = steps * statistics.fmean(rows) / iterations / (seconds / 60)
    counts = None
    if groups_per_batch and labels:
        counts = round(sum(labels) * groups_per_batch)
    return {
        "outside_bounds_mean": statistics.fmean(outside) if outside else None,
        "ratio_min": min(smallest) if smallest else None,
        "correct_majority": counts,
        "groups": len(labels) * groups_per_batch if groups_per_batch and labels else None,
        "trajectory": [(e.get("loss"), e.get("grad_norm")) for e in entries if "loss" in e and "step" in e],
        "completions_per_minute": per_minute,
    }


def groups_per_batch(keys: Mapping[str, Any]) -> int | None:
    """Prompts per generation batch of a single-process run with these gbpo.train keys, when they say."""
    try:
        batch = int(keys["per_device_train_batch_size"]) * int(keys.get("steps_per_generation") or 1)
        return batch // int(keys["num_generations"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def provenance_cell(run_dirs: Sequence[Path]) -> str:
    """Which machines and commits a cell's runs came from: ``"<cpu> x<threads>: n; commit abc1234: n"``, with
    ``DIFFER`` when its recorded runs differ in either and ``"k not recorded"`` for runs without ``run.json``.

    When the commits differ, the cell also says whether the package code (``gbpo/``, its git tree at each commit,
    looked up in the repository holding the run directories) is the same at all of them: runs committed one after
    another start from commits that differ only in run data. Nothing is added when a commit cannot be looked up or a
    run's tree was dirty (or not known to be clean)."""
    machines: dict[str, int] = {}
    commits: dict[str, int] = {}
    full_commits: set[str] = set()
    missing = 0
    for run_dir in run_dirs:
        record = read_run_json(run_dir)
        if record is None:
            missing += 1
            continue
        m = record.get("machine", {})
        flags = "+".join(f for f in ("avx512_bf16", "amx_bf16") if m.get(f)) or "no bf16 instr."
        machine = f"{m.get('cpu_model')} ({flags}, {m.get('torch_threads')} threads)"
        git = record.get("git", {})
        commit = (git.get("commit") or "unknown")[:7] + ("+dirty" if git.get("dirty") else "")
        full_commits.add("" if git.get("dirty") is not False else git.get("commit") or "")
        machines[machine] = machines.get(machine, 0) + 1
        commits[commit] = commits.get(commit, 0) + 1
    parts = []
    if machines:
        flag = "DIFFER: " if len(machines) > 1 or len(commits) > 1 else ""
        parts.append(flag + "; ".join(f"{k}: {n}" for k, n in machines.items()))
        code = ""
        if len(commits) > 1:
            trees = {code_tree(c, run_dirs[0]) if c else None for c in full_commits}
            if None not in trees:
                code = " (gbpo/ code the same at all)" if len(trees) == 1 else " (gbpo/ code differs)"
        parts.append("commits " + ", ".join(f"{k} ({n})" for k, n in commits.items()) + code)
    if missing:
        parts.append(f"{missing} provenance not recorded")
    return "; ".join(parts) or "-"


def same_trajectories(trajectories: Mapping[str, Mapping[int, list]]) -> list[list[str]]:
    """Methods whose runs are one trajectory: ``{method: {seed: [(loss, grad_norm) per step]}}`` -> lists of methods
    (two or more) whose runs have the same per-step loss and grad norm for every seed they share (at least one)."""
    methods = [m for m in trajectories if trajectories[m]]
    classes: list[list[str]] = []
    for method in methods:
        for group in classes:
            other = trajectories[group[0]]
            shared = set(other) & set(trajectories[method])
            if shared and all(other[s] == trajectories[method][s] for s in shared):
                group.append(method)
                break
        else:
            classes.append([method])
    return [c for c in classes if len(c) > 1]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _spread(summary: Mapping[str, Any]) -> str:
    sd = "" if summary["sd"] is None else f" ± {summary['sd']:.1f}"
    return f"{summary['mean']:.1f}{sd} ({', '.join(f'{v:.1f}' for v in summary['values'])})"


def study_sections(
    settings: Mapping[str, Any],
    out: Path,
    plan: Callable[[str], tuple[dict[str, Any], list[str], dict[str, list[int]]]],
    summaries: Summaries,
) -> list[str]:
    """The report's study lines (module docstring) for the finished runs ``summaries`` ``{(group, method, seed):
    summary}``; ``plan(group)`` is `gbpo.compare.group_plan` (keys, methods, seeds per method)."""
    lines = ["## Statistics over seeds", ""]
    train_h, eval_h, counted = _hours(out, summaries)
    lines += [
        f"Time of the {counted} finished runs: {train_h:.1f} h of training and {eval_h:.1f} h of evaluation during "
        "training (from run.json; for runs without it, the sum of the steps' step_time, and the Trainer's "
        "train_runtime minus that sum).",
        "",
    ]
    lines += [
        "Per cell: mean ± seed standard deviation (every seed's value, in seed order), in percent after training. "
        "Outside bounds: the fraction of loss tokens outside [1 - eps, 1 + eps_high], averaged over the run's steps. "
        "Correct majorities: per run, the generation groups whose majority label was right, of all its groups. "
        "Completions/min: distinct completions trained per minute of training (evaluation and start-up left out). "
        "The 95% intervals in the group tables below are evaluation sampling over problems, not seed spread.",
        "",
    ]
    for group in settings["groups"]:
        keys, methods, seeds = plan(group)
        shown_as = (settings["groups"][group] or {}).get("shown_as") or {}
        lines += [f"### {group}", ""]
        k = keys.get("eval_num_samples", "k")
        labels = [label.replace("k", str(k)) for _, label in METRICS]
        header = ["method", "n", *labels, "outside bounds", "smallest ratio", "correct majorities",
                  "completions/min", "machines and commits"]  # fmt: skip
        lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        trajectories: dict[str, dict[int, list]] = {}
        for method in [*methods, *shown_as]:
            source = shown_as.get(method, {}).get("method", method) if method in shown_as else method
            done = [s for s in seeds.get(source, []) if (group, source, s) in summaries]
            dirs = [out / "runs" / group / source / f"seed{s}" for s in done]
            if not done:
                lines.append(f"| {method} | 0 |" + " - |" * (len(header) - 2))
                continue
            extras = [run_extras(d, groups_per_batch(keys)) for d in dirs]
            if method not in shown_as:
                trajectories[method] = {s: e["trajectory"] for s, e in zip(done, extras, strict=True)}
            cells = []
            for key, _ in METRICS:
                values = [summaries[(group, source, s)].get(key) for s in done]
                known = [v * 100 for v in values if v is not None]
                cells.append(_spread(seed_summary(known)) if known else "n/a")
            outside = [e["outside_bounds_mean"] for e in extras if e["outside_bounds_mean"] is not None]
            smallest = [e["ratio_min"] for e in extras if e["ratio_min"] is not None]
            majorities = ", ".join(
                "-" if e["correct_majority"] is None else f"{e['correct_majority']}/{e['groups']}" for e in extras
            )
            name = f"{method} (= {source}, not run)" if method in shown_as else method
            cells += [
                f"{statistics.fmean(outside):.3f} ({', '.join(f'{v:.3f}' for v in outside)})" if outside else "n/a",
                f"{_fmt(min(smallest))} ({', '.join(_fmt(v) for v in smallest)})" if smallest else "n/a",
                majorities,
                _speed_cell([e["completions_per_minute"] for e in extras]),
                provenance_cell(dirs),
            ]
            lines.append(f"| {name} | {len(done)} | " + " | ".join(cells) + " |")
        lines.append("")
        for method, spec in shown_as.items():
            lines += [f"{method} is not run in {group}: its cell shows {spec['method']}'s runs. {spec['reason']}", ""]
        for same in same_trajectories(trajectories):
            shared = sorted(set.intersection(*(set(trajectories[m]) for m in same)))
            lines += [
                f"One trajectory: {', '.join(same)} have the same loss and grad norm at every step for seed(s) "
                f"{', '.join(map(str, shared))}, so their rows are one run each, not independent evidence.",
                "",
            ]
        note = (settings["groups"][group] or {}).get("note")
        if note:
            lines += [str(note).strip(), ""]
        _paired_table(settings, group, seeds, shown_as, summaries, lines, k)
    return lines


def _speed_cell(values: Sequence[float | None]) -> str:
    """Mean trained completions a minute and every run's, in seed order ("-" for a run without run.json)."""
    known = [v for v in values if v is not None]
    if not known:
        return "n/a"
    return f"{statistics.fmean(known):.1f} ({', '.join('-' if v is None else f'{v:.1f}' for v in values)})"


def _hours(out: Path, summaries: Summaries) -> tuple[float, float, int]:
    """Training and evaluation hours summed over the finished runs (see `study_sections`)."""
    train = evaluation = 0.0
    for group, method, seed in summaries:
        run_dir = out / "runs" / group / method / f"seed{seed}"
        record = read_run_json(run_dir)
        if record is not None and record.get("time", {}).get("train_seconds") is not None:
            train += record["time"]["train_seconds"]
            evaluation += record["time"]["eval_seconds"]
            continue
        entries = read_metrics(run_dir)
        steps = sum(float(e.get("step_time", 0.0)) for e in entries if "loss" in e and "step" in e)
        runtime = max((float(e["train_runtime"]) for e in entries if "train_runtime" in e), default=steps)
        train += steps
        evaluation += max(runtime - steps, 0.0)
    return train / 3600, evaluation / 3600, len(summaries)


def _paired_table(settings, group, seeds, shown_as, summaries: Summaries, lines: list[str], k) -> None:
    """Append the group's paired differences (each pair of ``settings["paired"]`` with runs in this group)."""
    rows = []
    for a, b in settings.get("paired") or []:
        src_a = shown_as.get(a, {}).get("method", a)
        src_b = shown_as.get(b, {}).get("method", b)
        common = [s for s in seeds.get(src_a, []) if s in seeds.get(src_b, [])]
        common = [s for s in common if (group, src_a, s) in summaries and (group, src_b, s) in summaries]
        if not common or src_a == src_b:
            continue
        for key, label in METRICS:
            va = [summaries[(group, src_a, s)].get(key) for s in common]
            vb = [summaries[(group, src_b, s)].get(key) for s in common]
            if any(v is None for v in va + vb):
                continue
            d = paired_difference([v * 100 for v in va], [v * 100 for v in vb])
            ci = "-" if d["ci95"] is None else f"[{d['ci95'][0]:.1f}, {d['ci95'][1]:.1f}]"
            p = "-" if d["p"] is None else f"{d['p']:.3g}"
            verdict = "decided" if d["decided"] else "not decided" if d["p"] is not None else "not decided (one seed)"
            seeds_text = ", ".join(map(str, common))
            cells = [
                f"{a} - {b}",
                label.replace("k", str(k)),
                f"{d['n']} ({seeds_text})",
                f"{d['mean']:+.1f}",
                ci,
                p,
                verdict,
            ]
            rows.append("| " + " | ".join(cells) + " |")
    if rows:
        lines += [
            f"Paired by seed in {group} (A - B, percentage points; bootstrap 95% interval over seeds; exact two-sided "
            f"sign-flip permutation p; decided: p <= {ALPHA}):",
            "",
            "| A - B | measure | seeds | mean difference | 95% interval | p | verdict |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]


def sweep_figure(settings, out: Path, plan, summaries: Summaries, before: Mapping[str, float], plt) -> Path | None:
    """Figure (a) (module docstring); None when the settings have no ``sweep`` or no run has an evaluation."""
    sweep = settings.get("sweep")
    if not sweep:
        return None
    points: dict[str, dict[float, list[float]]] = {}
    for (group, method, _), summary in summaries.items():
        if summary.get("eval_pass@1") is not None:
            x = float(plan(group)[0][sweep])
            points.setdefault(method, {}).setdefault(x, []).append(summary["eval_pass@1"] * 100)
    if not points:
        return None
    values = sorted({float(plan(g)[0][sweep]) for g in settings["groups"]})
    fig, ax = plt.subplots(figsize=(6.4, 4))
    methods = list(settings["methods"])
    for i, method in enumerate(methods):  # one colour per method, the same in every report
        if method not in points:
            continue
        xs = sorted(points[method])
        offset = (i - (len(methods) - 1) / 2) * 0.025  # side by side at each x, in log2 units
        shifted = [x * 2**offset for x in xs]
        means = [statistics.fmean(points[method][x]) for x in xs]
        sds = [statistics.stdev(points[method][x]) if len(points[method][x]) > 1 else 0.0 for x in xs]
        ax.errorbar(shifted, means, yerr=sds, color=f"C{i}", marker="o", linestyle="none", capsize=3, label=method)
        for j in range(1, len(xs)):  # join neighbouring sweep values only: no line across a value without runs
            if values.index(xs[j]) == values.index(xs[j - 1]) + 1:
                ax.plot(shifted[j - 1 : j + 1], means[j - 1 : j + 1], color=f"C{i}")
        for x, sx in zip(xs, shifted, strict=True):
            ax.scatter([sx] * len(points[method][x]), points[method][x], color=f"C{i}", alpha=0.4, s=14)
    for name, avg in before.items():
        ax.axhline(avg * 100, color="grey", linestyle=":", label=f"before training ({name})")
    if len(values) > 2 and values[0] > 0 and values[-1] / values[0] >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.set(title="avg@k after training: mean ± seed sd, dots: seeds", xlabel=sweep, ylabel="avg@k (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{sweep}_avg.png"
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path
