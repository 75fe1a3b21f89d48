"""Compare loss types on real runs: ``python -m gbpo.compare SETTINGS.yaml --output-dir DIR``.

The settings file names a recipe, seeds, overrides common to every run, groups of settings (e.g. a reference and a
stress setting) and methods (a loss type and its keys)::

    recipe: recipes/smollm2_cpu.yaml
    seeds: [0, 1]
    common: {max_steps: 8, eval_benchmarks: [arithmetic], eval_steps: 8}   # gbpo.train keys
    groups: {reference: {learning_rate: 2.0e-6}, stress: {learning_rate: 2.0e-5, num_iterations: 4}}
    methods: {gbpo: {loss_type: gbpo}, grpo: {loss_type: dapo}}
    before: [--model, smollm2-135m, --benchmarks, arithmetic]               # optional: gbpo.evaluate arguments
    sweep: num_iterations                                                   # optional: the key the groups vary

A group may also name its own ``methods`` (a list of names from ``methods``) and ``seeds`` (a list, or a mapping of
method -> list for the methods that differ); by default it runs every method with the top-level seeds. A group's
``shown_as: {method: {method: other, reason: why}}`` shows a method it does not run with another's runs, and its
``note`` is printed under its statistics; the top-level ``paired: [[a, b], ...]`` compares methods seed by seed
(`gbpo.study_report`). Every (group, seed, method) is one ``python -m gbpo.train`` subprocess (training is
never re-implemented here) into ``DIR/runs/<group>/<method>/seed<k>``, whose ``metrics.jsonl`` the report reads.
With ``--work-dir W`` the runs train in ``W/runs/...`` (checkpoints and weights stay there) and each finished run's
``metrics.jsonl``, ``run.json`` (its provenance) and ``eval_samples/`` (its evaluation, sample by sample) are copied
to ``DIR/runs/...``, the part of a study worth committing. A run that trained to its
``max_steps`` is not run again; one that stopped early (the study or the run was killed) resumes from its newest
complete checkpoint (``--resume_from_checkpoint true``), or starts afresh if it has none, so an interrupted study
continues. The report leaves unfinished runs out and says how many. ``before`` evaluates the starting model once
with ``python -m gbpo.evaluate`` (``DIR/before``). Then ``DIR/report.md`` gets one table per group (mean over seeds,
per-seed values beside it) and ``DIR/<group>_<quantity>.png`` one figure per quantity with every method's curve over
steps. With ``sweep``, ``DIR/<sweep>_avg.png`` draws the benchmark avg@k after training (the runs' last in-training
evaluation) against the groups' values of that key (`gbpo.study_report.sweep_figure`).
``--dry-run`` prints the commands that would run now; ``--report-only`` rebuilds the report from existing runs;
``--max-runs N`` stops after N runs (a long study is run and committed run by run).
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from .checkpoints import is_complete_checkpoint
from .run_metrics import metric_series, read_metrics
from .study_report import study_sections, sweep_figure

__all__ = ["CURVES", "load_settings", "main", "run_commands", "run_finished", "summarise_run", "write_report"]

# Curves drawn per group: (file stem, title, metric keys tried in order; "{loss}" is the run's loss type).
CURVES = (
    ("reward", "mean reward (majority vote)", ("reward",)),
    ("label_accuracy", "TTRL label accuracy", ("ttrl/label_accuracy",)),
    ("entropy", "policy entropy (nats/token)", ("entropy",)),
    ("ratio_max", "largest ratio in the step", ("gbpo/ratio/max", "{loss}/ratio/max")),
    ("ratio_min", "smallest ratio in the step", ("gbpo/ratio/min", "{loss}/ratio/min")),
    ("outside_bounds", "loss tokens outside [1 - eps, 1 + eps_high]", ("gbpo/outside_bounds/region_mean",)),
    ("state", "lambda (R2VPO) / eps_t (PPO-BR)", ("r2vpo/lambda", "ppo_br/epsilon")),
)
# A run's reward has collapsed at the first generation step whose mean reward is below this share of the first one.
COLLAPSE_SHARE = 0.5
# Keys of a group that are the study's, not gbpo.train's.
GROUP_PLAN_KEYS = ("methods", "seeds", "shown_as", "note")


def load_settings(path: str | Path) -> dict[str, Any]:
    """Read and check a settings file (format in the module docstring).

    Raises:
        ValueError: a missing or malformed key, named.
    """
    settings = yaml.safe_load(Path(path).read_text())
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a mapping with recipe, seeds, groups and methods.")
    for key in ("recipe", "seeds", "groups", "methods"):
        if key not in settings:
            raise ValueError(f"{path}: missing key {key!r} (see python -m gbpo.compare --help).")
    for key in ("groups", "methods"):
        if not isinstance(settings[key], dict) or not settings[key]:
            raise ValueError(f"{path}: {key} must be a non-empty mapping of name -> gbpo.train keys.")
    if not settings["seeds"] or not all(isinstance(s, int) for s in settings["seeds"]):
        raise ValueError(f"{path}: seeds must be a list of integers, got {settings['seeds']!r}.")
    for name, keys in settings["methods"].items():
        if "loss_type" not in (keys or {}):
            raise ValueError(f"{path}: method {name!r} has no loss_type.")
    settings.setdefault("common", {})
    for pair in settings.get("paired") or []:
        if not (isinstance(pair, list) and len(pair) == 2 and set(pair) <= set(settings["methods"])):
            raise ValueError(f"{path}: paired must be a list of [method, method] pairs from methods, got {pair!r}.")
    sweep = settings.get("sweep")
    for name, keys in settings["groups"].items():
        keys = keys or {}
        methods, seeds = keys.get("methods"), keys.get("seeds")
        if methods is not None and (not isinstance(methods, list) or not set(methods) <= set(settings["methods"])):
            raise ValueError(
                f"{path}: group {name!r}: methods must be a list of names from methods "
                f"{list(settings['methods'])}, got {methods!r}."
            )
        per_method = seeds if isinstance(seeds, dict) else {"": seeds} if seeds is not None else {}
        for method, values in per_method.items():
            if method and method not in settings["methods"]:
                raise ValueError(f"{path}: group {name!r}: seeds names {method!r}, which is not in methods.")
            if not isinstance(values, list) or not values or not all(isinstance(x, int) for x in values):
                raise ValueError(
                    f"{path}: group {name!r}: seeds must be a list of integers or a mapping of method -> list of "
                    f"integers, got {seeds!r}."
                )
        for method, spec in (keys.get("shown_as") or {}).items():
            if not isinstance(spec, dict) or spec.get("method") not in settings["methods"] or not spec.get("reason"):
                raise ValueError(
                    f"{path}: group {name!r}: shown_as.{method} must be {{method: <a name from methods>, reason: "
                    f"<why it is not run>}}, got {spec!r}."
                )
        if sweep is not None and sweep not in keys and sweep not in settings["common"]:
            raise ValueError(f"{path}: group {name!r} sets no {sweep!r}, the sweep key: set it in the group or common.")
    return settings


def group_plan(settings: Mapping[str, Any], group: str) -> tuple[dict[str, Any], list[str], dict[str, list[int]]]:
    """A group's ``(gbpo.train keys common to its runs, method names, {method: seeds})``."""
    keys = dict(settings["groups"][group] or {})
    methods = keys.pop("methods", None) or list(settings["methods"])
    seeds = keys.pop("seeds", None) or list(settings["seeds"])
    for key in GROUP_PLAN_KEYS:
        keys.pop(key, None)
    if not isinstance(seeds, dict):
        seeds = {method: seeds for method in methods}
    seeds = {method: list(seeds.get(method, settings["seeds"])) for method in methods}
    return {**settings["common"], **keys}, methods, seeds


def _flags(keys: Mapping[str, Any] | None) -> list[str]:
    flags = []
    for key, value in (keys or {}).items():
        values = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *[str(v).lower() if isinstance(v, bool) else str(v) for v in values]]
    return flags


def _run_keys(settings: Mapping[str, Any], output_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(run directory, gbpo.train keys)`` for every group x seed x method of the group, in that order (so the
    methods of one seed finish side by side)."""
    runs = []
    for group in settings["groups"]:
        group_keys, methods, seeds = group_plan(settings, group)
        for seed in sorted(set().union(*seeds.values()), key=_seed_order(seeds)):
            for method in [m for m in methods if seed in seeds[m]]:
                out = Path(output_dir) / "runs" / group / method / f"seed{seed}"
                keys = {**group_keys, **(settings["methods"][method] or {})}
                runs.append((out, keys | {"seed": seed, "output_dir": str(out)}))
    return runs


def _seed_order(seeds: Mapping[str, list[int]]):
    """Seeds in the order the settings list them (the first method's list first)."""
    order = [s for values in seeds.values() for s in values]
    return order.index


def _train_command(settings: Mapping[str, Any], keys: Mapping[str, Any], resume: bool = False) -> list[str]:
    keys = {**keys, "resume_from_checkpoint" if resume else "overwrite_output_dir": True}
    return [sys.executable, "-m", "gbpo.train", str(settings["recipe"]), *_flags(keys)]


def run_commands(settings: Mapping[str, Any], output_dir: str | Path) -> list[tuple[Path, list[str]]]:
    """``(run directory, gbpo.train command)`` for every group x method x seed, in that order (fresh runs)."""
    return [(out, _train_command(settings, keys)) for out, keys in _run_keys(settings, output_dir)]


def _max_steps(settings: Mapping[str, Any], keys: Mapping[str, Any]) -> int | None:
    """The run's ``max_steps``: its keys', else the recipe's (None when neither sets a positive one: epochs decide)."""
    value = keys.get("max_steps")
    if value is None:
        recipe = Path(settings["recipe"])
        value = (yaml.safe_load(recipe.read_text()) or {}).get("max_steps") if recipe.is_file() else None
    return int(value) if value is not None and int(value) > 0 else None


def run_finished(run_dir: str | Path, max_steps: int | None) -> bool:
    """True when the run in ``run_dir`` trained to its end.

    That is: its ``metrics.jsonl`` holds the Trainer's closing entry (``train_runtime``) at step ``max_steps`` or
    later. A run stopped early by SIGTERM also writes a closing entry, at the step it reached, so the step is what
    tells them apart; with ``max_steps`` None any closing entry counts.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return False
    closing = [e.get("step", 0) for e in read_metrics(run_dir) if "train_runtime" in e]
    return bool(closing) and (max_steps is None or max(closing) >= max_steps)


def summarise_run(run_dir: str | Path, loss_type: str) -> dict[str, float | None]:
    """The table's numbers for one run, from its ``metrics.jsonl``.

    ``label_accuracy_final``/``_best``: TTRL label accuracy of the last / best generation batch; ``majority_ratio``:
    of the last batch; ``eval_pass@1`` (avg@n) with ``eval_ci95_low``/``_high`` (its 95% interval over problems, when
    logged), ``eval_pass@k`` and ``eval_maj@k``: the last in-training benchmark evaluation (the first benchmark; the
    largest k); ``entropy_end``: the last step's; ``ratio_max``: the largest ratio of any step (``gbpo/ratio/max``,
    logged for every loss type; None when the run did not log it); ``collapse_step``: the first generation step whose
    reward is below ``COLLAPSE_SHARE`` of the first one (None: no collapse); ``final_<state>``: R2VPO's lambda /
    PPO-BR's eps_t; ``epsilon_min``/``epsilon_max``: the range PPO-BR's eps_t took over the run.
    """
    entries = read_metrics(run_dir)
    label = [v for _, v in metric_series(entries, ("ttrl/label_accuracy",), loss_type)]
    reward = metric_series(entries, ("reward",), loss_type)
    ratio_keys = ("gbpo/ratio/max", "{loss}/ratio/max")
    summary: dict[str, float | None] = {
        "label_accuracy_final": label[-1] if label else None,
        "label_accuracy_best": max(label) if label else None,
        "majority_ratio": (metric_series(entries, ("ttrl/majority_ratio",), loss_type) or [(0, None)])[-1][1],
        "entropy_end": (metric_series(entries, ("entropy",), loss_type) or [(0, None)])[-1][1],
        "ratio_max": max((v for _, v in metric_series(entries, ratio_keys, loss_type)), default=None),
        "collapse_step": None,
    }
    if reward and reward[0][1] > 0:
        summary["collapse_step"] = next((s for s, v in reward if v < COLLAPSE_SHARE * reward[0][1]), None)
    evals = [e for e in entries if any(k.startswith("eval/") and k.endswith("/pass@1") for k in e)]
    if evals:
        last = evals[-1]
        bench = sorted(k for k in last if k.startswith("eval/") and k.endswith("/pass@1"))[0].split("/")[1]
        ks = sorted(int(k.rsplit("@", 1)[1]) for k in last if k.startswith(f"eval/{bench}/maj@"))
        summary["eval_pass@1"] = last[f"eval/{bench}/pass@1"]
        summary["eval_ci95_low"] = last.get(f"eval/{bench}/pass@1_ci95_low")
        summary["eval_ci95_high"] = last.get(f"eval/{bench}/pass@1_ci95_high")
        summary["eval_maj@k"] = last[f"eval/{bench}/maj@{ks[-1]}"] if ks else None
        summary["eval_pass@k"] = last.get(f"eval/{bench}/pass@{ks[-1]}") if ks and ks[-1] > 1 else None
    for key in ("r2vpo/lambda", "ppo_br/epsilon"):
        series = metric_series(entries, (key,), loss_type)
        if series:
            summary["final_" + key.replace("/", "_")] = series[-1][1]
    epsilons = [v for _, v in metric_series(entries, ("ppo_br/epsilon",), loss_type)]
    if epsilons:
        summary["epsilon_min"], summary["epsilon_max"] = min(epsilons), max(epsilons)
    return summary


COLUMNS = (
    ("label_accuracy_final", "label acc. (final)", 100),
    ("label_accuracy_best", "label acc. (best)", 100),
    ("majority_ratio", "majority ratio", 100),
    ("eval_pass@1", "eval avg@k after", 100),
    ("eval_maj@k", "eval maj@k after", 100),
    ("eval_pass@k", "eval pass@k after", 100),
    ("entropy_end", "entropy at end", 1),
    ("ratio_max", "largest ratio", 1),
    ("collapse_step", "reward collapse step", 1),
)
# Columns whose cell is a range per seed, "low-high", from two summary keys (scale, digits).
RANGE_COLUMNS = (
    ("eval_ci95_low", "eval_ci95_high", "avg@k 95% interval", 100, 3),
    ("epsilon_min", "epsilon_max", "PPO-BR eps_t range", 1, 3),
)


def _cell(values: Sequence[float | None], scale: float, absent: str = "n/a") -> str:
    known = [v for v in values if v is not None]
    if not known:
        return absent
    per_seed = ", ".join("-" if v is None else f"{v * scale:.3g}" for v in values)
    return f"{sum(known) / len(known) * scale:.3g} ({per_seed})"


def _range_cell(summaries: Sequence[Mapping[str, Any]], low: str, high: str, scale: float, digits: int) -> str:
    ranges = [(s.get(low), s.get(high)) for s in summaries]
    if all(a is None or b is None for a, b in ranges):
        return "n/a"
    return "; ".join(
        "-" if a is None or b is None else f"{a * scale:.{digits}g}-{b * scale:.{digits}g}" for a, b in ranges
    )


def _before_avg(out: Path) -> dict[str, float]:
    """``{benchmark: avg@n}`` of the ``before`` evaluation, when it ran."""
    before = out / "before" / "results.json"
    if not before.is_file():
        return {}
    return {name: b["metrics"]["pass@1"] for name, b in json.loads(before.read_text())["benchmarks"].items()}


def write_report(settings: Mapping[str, Any], output_dir: str | Path, command: str = "") -> Path:
    """Write ``report.md`` and the figures from the runs under ``output_dir/runs``; returns report.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output_dir)
    lines = ["# Loss comparison", ""]
    if command:
        lines += ["Made by:", "", "```bash", command, "```", ""]
    lines += ["Settings:", "", "```yaml", yaml.safe_dump(dict(settings), sort_keys=False).strip(), "```", ""]
    before = out / "before" / "results.json"
    if before.is_file():
        for name, bench in json.loads(before.read_text())["benchmarks"].items():
            m = bench["metrics"]
            n = m["num_samples"]
            maj = max((k for k in m if k.startswith("maj@")), key=lambda k: int(k[4:]))
            avg = f"avg@{n} {m['pass@1'] * 100:.3g}"
            if f"avg@{n}_ci95_low" in m:
                avg += f" (95% interval {m[f'avg@{n}_ci95_low'] * 100:.3g}-{m[f'avg@{n}_ci95_high'] * 100:.3g})"
            pass_k = f", pass@{n} {m[f'pass@{n}'] * 100:.3g}" if f"pass@{n}" in m else ""
            lines.append(f"Before training ({name}, {m['num_problems']} problems): {avg}, {maj} {m[maj] * 100:.3g}"
                         f"{pass_k}.")  # fmt: skip
        lines.append("")
    finished: dict[tuple[str, str, int], dict[str, Any]] = {}
    missing: list[str] = []
    body: list[str] = []
    for group in settings["groups"]:
        group_keys, methods, seeds = group_plan(settings, group)
        headers = [c[1] for c in COLUMNS] + [c[2] for c in RANGE_COLUMNS]
        body += ["", f"## {group}", "", "| method | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
        curves: dict[str, dict[str, list[list[tuple[int, float]]]]] = {c[0]: {} for c in CURVES}
        for method in methods:
            keys = settings["methods"][method]
            loss = keys["loss_type"]
            summaries, unfinished = [], 0
            for seed in seeds[method]:
                run = out / "runs" / group / method / f"seed{seed}"
                if not run_finished(run, _max_steps(settings, {**group_keys, **keys})):
                    unfinished += (run / "metrics.jsonl").is_file()
                    missing.append(f"{group}/{method}/seed{seed}")
                    summaries.append(None)
                    continue
                summaries.append(summarise_run(run, loss))
                finished[(group, method, seed)] = summaries[-1]
                entries = read_metrics(run)
                for stem, _, metric_keys in CURVES:
                    curves[stem].setdefault(method, []).append(metric_series(entries, metric_keys, loss))
            done = [s for s in summaries if s is not None]
            cells = [
                _cell([s.get(key) for s in done], scale, "-" if key == "collapse_step" else "n/a")
                for key, _, scale in COLUMNS
            ] + [_range_cell(done, low, high, scale, digits) for low, high, _, scale, digits in RANGE_COLUMNS]
            absent = len(summaries) - len(done) - unfinished
            notes = [f"{n} run(s) {what}" for n, what in ((absent, "missing"), (unfinished, "unfinished")) if n]
            note = f" ({', '.join(notes)})" if notes else ""
            body.append(f"| {method} ({loss}){note} | " + " | ".join(cells) + " |")
        body.append("")
        for stem, title, _ in CURVES:
            if not any(any(series) for series in curves[stem].values()):
                continue
            fig, ax = plt.subplots(figsize=(6, 3.6))
            for i, (method, runs) in enumerate(curves[stem].items()):
                for j, series in enumerate(runs):
                    if series:
                        steps, values = zip(*series, strict=True)
                        ax.plot(steps, values, color=f"C{i}", alpha=0.9 if j == 0 else 0.5,
                                linestyle="-" if j == 0 else "--", label=method if j == 0 else None)  # fmt: skip
            ax.set(title=f"{group}: {title}", xlabel="optimizer step")
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = out / f"{group}_{stem}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            body.append(f"![{group}: {title}]({path.name})")
        body.append("")
    lines.append(
        "Cells: mean over seeds (per-seed values); accuracies and the majority ratio in percent; n/a: not logged by "
        "that loss type; -: did not happen (a mean is over the seeds where it did). Ranges are per seed."
    )
    lines.append("")
    lines.append(
        f"Runs missing or unfinished ({len(missing)}): {', '.join(missing)}." if missing else "Every run is in."
    )
    plan = functools.partial(group_plan, settings)
    figure = sweep_figure(settings, out, plan, finished, _before_avg(out), plt)
    if figure is not None:
        lines += ["", f"![avg@k after training against {settings['sweep']}]({figure.name})"]
    lines += ["", *study_sections(settings, out, plan, finished)]
    lines += body
    lines.append("Solid line: first seed; dashed: the others.")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> Path | None:
    """The command (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m gbpo.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("settings", help="settings YAML (recipe, seeds, common, groups, methods, before, sweep)")
    p.add_argument("--output-dir", required=True, help="where the runs' metrics, figures and report.md go")
    p.add_argument("--work-dir", help="train the runs here (checkpoints, weights); copy each finished run's metrics")
    p.add_argument("--dry-run", action="store_true", help="print the commands that would run now, run nothing")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the runs already there")
    p.add_argument("--groups", help="comma-separated groups to run now (default all); the report shows every group")
    p.add_argument("--methods", help="comma-separated methods to run now (default all)")
    p.add_argument("--seeds", help="comma-separated seeds to run now (default all); missing runs show in the report")
    p.add_argument("--max-runs", type=int, help="run at most this many training runs now, then write the report")
    args = p.parse_args(argv)
    try:
        settings = load_settings(args.settings)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    out = Path(args.output_dir)
    work = Path(args.work_dir) if args.work_dir else out
    runs = _run_keys(settings, work)
    for flag, names, known in (("--groups", args.groups, settings["groups"]), ("--methods", args.methods,
                                                                             settings["methods"])):  # fmt: skip
        unknown = set(names.split(",")) - set(known) if names else set()
        if unknown:
            p.error(f"{flag}: unknown {flag[2:-1]}(s) {sorted(unknown)}; the settings have {list(known)}")
    part = {"--groups": 0, "--methods": 1}
    for flag, names in (("--groups", args.groups), ("--methods", args.methods)):
        if names:
            runs = [(d, k) for d, k in runs if d.relative_to(work / "runs").parts[part[flag]] in names.split(",")]
    if args.seeds:
        runs = [(d, k) for d, k in runs if d.name.removeprefix("seed") in args.seeds.split(",")]
    before = settings.get("before")
    before_command = None
    if before and not (out / "before" / "results.json").is_file():
        before_command = [sys.executable, "-m", "gbpo.evaluate", *map(str, before), "--output-dir", str(out / "before")]
    # What runs now: every run not trained to its end; one stopped early resumes from its newest complete checkpoint.
    todo = []
    for run_dir, keys in runs:
        published = out / run_dir.relative_to(work)
        max_steps = _max_steps(settings, keys)
        if run_finished(published, max_steps):
            continue
        if run_finished(run_dir, max_steps):  # trained, but its metrics were not copied yet
            _publish(run_dir, published)
            continue
        resume = any(map(is_complete_checkpoint, run_dir.glob("checkpoint-*")))
        todo.append((run_dir, published, _train_command(settings, keys, resume=resume)))
    if args.max_runs is not None:
        todo = todo[: args.max_runs]
    if args.dry_run:
        for command in ([before_command] if before_command else []) + [c for _, _, c in todo]:
            print(shlex.join(command))
        return None
    if not args.report_only:
        if before_command:
            _run(before_command, out / "before.log")
        for run_dir, published, train_command in tqdm(todo, desc="runs", unit="run"):
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            _run(train_command, run_dir.parent / f"{run_dir.name}.log")
            _publish(run_dir, published)
    command = shlex.join(["python", "-m", "gbpo.compare", args.settings, "--output-dir", args.output_dir])
    report = write_report(settings, out, command)
    print(f"Report: {report}")
    return report


def _publish(run_dir: Path, published: Path) -> None:
    """Copy a finished run's ``metrics.jsonl``, ``run.json`` and per-sample evaluation (``eval_samples/``) from the
    work directory to the output directory (nothing when the two are one)."""
    if run_dir.resolve() != published.resolve():
        published.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "run.json"):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, published / name)
        if (run_dir / "eval_samples").is_dir():
            shutil.copytree(run_dir / "eval_samples", published / "eval_samples", dirs_exist_ok=True)


def _run(command: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        status = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise SystemExit(f"gbpo.compare: {shlex.join(command)} exited with {status}; its output is in {log}.")


if __name__ == "__main__":
    main()
