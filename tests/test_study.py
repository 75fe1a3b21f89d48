"""The study's statistics over seeds, provenance and report sections (issue 33), on hand-worked values."""

import json
import subprocess

import pytest
import yaml
from test_compare import SETTINGS, fake_run

from gbpo.compare import main
from gbpo.provenance import cpu_info, git_state, read_run_json
from gbpo.study_report import provenance_cell, run_extras, same_trajectories
from gbpo.study_stats import paired_difference, seed_summary


def test_six_pairs_in_one_direction_give_exact_p_two_in_64():
    d = paired_difference([80, 81, 90, 70, 75, 88], [70, 80, 60, 69, 74, 40])
    assert d["p"] == pytest.approx(2 / 64) and d["decided"]  # only the observed signs and their mirror are as extreme
    assert d["mean"] == pytest.approx((10 + 1 + 30 + 1 + 1 + 48) / 6)
    low, high = d["ci95"]
    assert 1 <= low < d["mean"] < high <= 48  # the bootstrap mean of resampled differences stays within their range
    assert paired_difference([80, 81, 90, 70, 75, 88], [70, 80, 60, 69, 74, 40])["ci95"] == d["ci95"]  # reproducible


def test_permutation_p_by_hand_with_mixed_signs():
    # differences 1, 2, -1: of the 8 sign flips, sums 2, 4, 2 are >= the observed 2 and -2, -4, -2 are <= -2
    d = paired_difference([1, 2, 3], [0, 0, 4])
    assert d["p"] == pytest.approx(6 / 8) and not d["decided"]
    assert d["differences"] == [1, 2, -1]
    # three seeds can never decide: the smallest p is 2/8
    assert paired_difference([3, 4, 5], [0, 0, 0])["p"] == pytest.approx(2 / 8)


def test_degenerate_and_bad_pairs():
    same = paired_difference([5, 5], [3, 3])
    assert same["ci95"] == (2, 2) and same["p"] == pytest.approx(2 / 4)
    zero = paired_difference([1, 2], [1, 2])
    assert zero["p"] == 1.0 and zero["ci95"] == (0, 0) and not zero["decided"]
    one = paired_difference([1], [0])
    assert one["ci95"] is None and one["p"] is None and one["mean"] == 1
    with pytest.raises(ValueError, match="pair seed by seed: got 2 and 1"):
        paired_difference([1, 2], [1])
    with pytest.raises(ValueError, match="empty"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="finite"):
        paired_difference([1, float("nan")], [1, 2])


def test_seed_summary_by_hand():
    s = seed_summary([40.1, 88.1])
    assert s["mean"] == pytest.approx(64.1) and s["sd"] == pytest.approx(48 / 2**0.5)
    assert seed_summary([7])["sd"] is None
    with pytest.raises(ValueError, match="empty"):
        seed_summary([])


def test_cpu_info_reads_the_model_and_bf16_flags(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx512f avx512_bf16\n")  # fmt: skip
    info = cpu_info(path)
    assert (info["cpu_model"], info["avx512_bf16"], info["amx_bf16"]) == ("AMD EPYC 9R14", True, False)
    unknown = cpu_info(tmp_path / "missing")
    assert unknown["avx512_bf16"] is None and unknown["amx_bf16"] is None and unknown["cpu_model"]


def test_git_state_of_a_clean_and_a_dirty_tree(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    state = git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "untracked.txt").write_text("run output")
    assert git_state(tmp_path)["dirty"] is False  # untracked files do not make the tree dirty
    (tmp_path / "a.txt").write_text("2")
    assert git_state(tmp_path)["dirty"] is True
    assert git_state(tmp_path.parent / "nowhere-") == {"commit": None, "dirty": None}


def run_json(run_dir, cpu="AMD EPYC", commit="a" * 40, threads=2):
    record = {"machine": {"cpu_model": cpu, "avx512_bf16": True, "amx_bf16": False, "torch_threads": threads},
              "git": {"commit": commit, "dirty": False}}  # fmt: skip
    (run_dir / "run.json").write_text(json.dumps(record))


def test_provenance_cell_flags_runs_from_different_machines_or_commits(tmp_path):
    dirs = []
    for i in range(3):
        dirs.append(tmp_path / f"seed{i}")
        dirs[-1].mkdir()
    run_json(dirs[0])
    run_json(dirs[1])
    assert provenance_cell(dirs) == (
        "AMD EPYC (avx512_bf16, 2 threads): 2; commits aaaaaaa (2); 1 provenance not recorded"
    )
    run_json(dirs[2], commit="b" * 40)
    assert provenance_cell(dirs).startswith("DIFFER: AMD EPYC") and "aaaaaaa (2), bbbbbbb (1)" in provenance_cell(dirs)
    (dirs[2] / "run.json").write_text("[1]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        read_run_json(dirs[2])


def test_provenance_cell_says_whether_differing_commits_ran_the_same_package_code(tmp_path):
    def commit(message):
        subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], cwd=tmp_path,
                       check=True)  # fmt: skip
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()  # fmt: skip

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "gbpo").mkdir()
    (tmp_path / "gbpo" / "loss.py").write_text("A = 1\n")
    first = commit("code")
    runs = tmp_path / "runs"
    dirs = [runs / f"seed{i}" for i in range(3)]
    for d in dirs:
        d.mkdir(parents=True)
    (dirs[0] / "metrics.jsonl").write_text("{}\n")
    data_only = commit("seed 0's run: data, no code")
    (tmp_path / "gbpo" / "loss.py").write_text("A = 2\n")
    changed = commit("a code change")
    run_json(dirs[0], commit=first)
    run_json(dirs[1], commit=data_only)
    assert provenance_cell(dirs[:2]).startswith("DIFFER: ")  # commits differ: still flagged, as the issue asks
    assert provenance_cell(dirs[:2]).endswith("(1) (gbpo/ code the same at all)")
    run_json(dirs[2], commit=changed)
    assert provenance_cell(dirs).endswith("(1) (gbpo/ code differs)")
    run_json(dirs[2], commit="c" * 40)  # not in this repository (a shallow clone): no claim either way
    assert provenance_cell(dirs).endswith("ccccccc (1)")
    run_json(dirs[1], commit=first)
    record = json.loads((dirs[2] / "run.json").read_text())
    record["git"] = {"commit": data_only, "dirty": True}  # a dirty tree's code is not its commit's
    (dirs[2] / "run.json").write_text(json.dumps(record))
    assert provenance_cell(dirs).endswith(f"{data_only[:7]}+dirty (1)")


def test_run_extras_count_correct_majorities_and_the_ratio_region(tmp_path):
    run = tmp_path / "run"
    extra = {s: {"gbpo/outside_bounds/region_mean": v, "gbpo/ratio/min": m}
             for s, v, m in ((1, 0.0, 1.0), (2, 0.1, 0.5), (3, 0.2, 0.02))}  # fmt: skip
    fake_run(run, rewards=[0.5, 0.6], labels=[0.5, 1.0], ratio_max=[1, 1.5, 2], entropy=[1, 1, 1], extra=extra)
    e = run_extras(run, groups_per_batch=2)
    # label accuracy 0.5 and 1.0 of 2 groups each: 1 + 2 correct majorities of 4 groups
    assert (e["correct_majority"], e["groups"]) == (3, 4)
    assert e["outside_bounds_mean"] == pytest.approx(0.1) and e["ratio_min"] == 0.02
    assert e["completions_per_minute"] is None  # no run.json: no training time apart from evaluation
    # 3 steps, 16 and 8 rows an optimizer step logged at the two generation steps (mean 12), 2 PPO epochs:
    # 3 x 12 / 2 = 18 distinct completions in 90 s of training = 12 a minute
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    metrics[0] = metrics[0][:-1] + ', "rows/trained_per_step": 16}'
    metrics[2] = metrics[2][:-1] + ', "rows/trained_per_step": 8}'
    (run / "metrics.jsonl").write_text("\n".join(metrics) + "\n")
    (run / "run.json").write_text(json.dumps({"time": {"train_seconds": 90.0}, "config": {"num_iterations": 2}}))
    assert run_extras(run, groups_per_batch=2)["completions_per_minute"] == pytest.approx(12.0)
    assert same_trajectories({"a": {0: [(1, 2)]}, "b": {0: [(1, 2)], 1: [(3, 4)]}, "c": {0: [(1, 3)]}}) == [["a", "b"]]


def test_report_statistics_paired_by_seed_and_shown_as(tmp_path, capsys):
    settings = {
        **SETTINGS,
        "seeds": [0, 1, 2],
        "common": {"max_steps": 3, "per_device_train_batch_size": 4, "num_generations": 2, "eval_num_samples": 4},
        "paired": [["gbpo", "grpo"], ["soft", "gbpo"]],
        "groups": {
            "reference": {
                "methods": ["gbpo", "grpo"],
                "seeds": {"grpo": [0, 1, 2]},
                "shown_as": {"soft": {"method": "grpo", "reason": "It is GRPO here."}},
            }
        },
        "methods": {"gbpo": {"loss_type": "gbpo"}, "grpo": {"loss_type": "dapo"}, "soft": {"loss_type": "gbpo"}},
    }
    out = tmp_path / "out"
    for seed in range(3):
        fake_run(out / f"runs/reference/gbpo/seed{seed}", [0.4, 0.6], [0.5, 1.0], [1.1, 1.3, 1.2], [0.9, 0.8, 0.7])
        fake_run(out / f"runs/reference/grpo/seed{seed}", [0.4, 0.6], [0.5, 0.0], [1.1, 1.3, 1.2], [0.9, 0.8, 0.7])
        run_json(out / f"runs/reference/gbpo/seed{seed}")
    # every fake run evaluates to avg@4 25, maj@4 75, pass@4 60: the differences are all 0
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    text = main([str(path), "--output-dir", str(out), "--report-only"]).read_text()
    capsys.readouterr()
    assert "| gbpo | 3 | 25.0 ± 0.0 (25.0, 25.0, 25.0) | 75.0 ± 0.0 (75.0, 75.0, 75.0) |" in text
    # no step_time logged: all of each run's 12.5 s train_runtime counts as evaluation (6 runs: 75 s = 0.02 h)
    assert "Time of the 6 finished runs: 0.0 h of training and 0.0 h of evaluation during training" in text
    # 2 groups a batch (4 rows / 2 generations), label accuracy 0.5 then 1.0 (gbpo) or 0.0 (grpo)
    # the fake runs log no rows/trained_per_step: no completions a minute
    assert "| 3/4, 3/4, 3/4 | n/a | AMD EPYC (avx512_bf16, 2 threads): 3; commits aaaaaaa (3) |" in text
    assert "| 1/4, 1/4, 1/4 | n/a | 3 provenance not recorded |" in text
    assert "| soft (= grpo, not run) | 3 |" in text and "It is GRPO here." in text
    assert "| gbpo - grpo | avg@4 | 3 (0, 1, 2) | +0.0 | [0.0, 0.0] | 1 | not decided |" in text
    assert "| soft - gbpo | maj@4 | 3 (0, 1, 2) | +0.0 |" in text
    assert "One trajectory: gbpo, grpo have the same loss and grad norm at every step for seed(s) 0, 1, 2" in text


def test_seeds_per_method_and_the_files_a_finished_run_publishes(tmp_path, monkeypatch, capsys):
    import gbpo.compare
    from gbpo.compare import load_settings, run_commands

    settings = {**SETTINGS, "seeds": [0, 1, 2], "groups": {"g": {"seeds": {"r2vpo": [0]}}}}
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    runs = run_commands(load_settings(path), tmp_path / "out")
    names = [str(d.relative_to(tmp_path / "out" / "runs" / "g")) for d, _ in runs]
    assert names == ["gbpo/seed0", "grpo/seed0", "r2vpo/seed0", "gbpo/seed1", "grpo/seed1", "gbpo/seed2", "grpo/seed2"]
    for bad, message in (({"ppo": [0]}, "seeds names 'ppo', which is not in methods"),
                         ({"gbpo": []}, "seeds must be a list of integers or a mapping")):  # fmt: skip
        path.write_text(yaml.safe_dump({**settings, "groups": {"g": {"seeds": bad}}}))
        with pytest.raises(ValueError, match=message):
            load_settings(path)
    path.write_text(yaml.safe_dump({**settings, "groups": {"g": {"shown_as": {"soft": {"method": "grpo"}}}}}))
    with pytest.raises(ValueError, match="shown_as.soft must be"):
        load_settings(path)
    path.write_text(yaml.safe_dump({**settings, "paired": [["gbpo", "ppo"]]}))
    with pytest.raises(ValueError, match="paired must be a list of"):
        load_settings(path)

    def fake_train(command, log):  # a finished run: metrics, provenance and per-sample evaluation
        run_dir = tmp_path / command[command.index("--output_dir") + 1]
        fake_run(run_dir, [0.4, 0.6], [0.5, 1.0], [1.1, 1.2, 1.3, 1.0], [0.9, 0.8, 0.7, 0.7])
        run_json(run_dir)
        (run_dir / "eval_samples").mkdir()
        (run_dir / "eval_samples" / "arithmetic-step4.jsonl.gz").write_bytes(b"gz")
        (run_dir / "checkpoint-4").mkdir()

    monkeypatch.setattr(gbpo.compare, "_run", fake_train)
    path.write_text(yaml.safe_dump(settings))
    out, work = tmp_path / "out", tmp_path / "work"
    main([str(path), "--output-dir", str(out), "--work-dir", str(work), "--max-runs", "1"])
    capsys.readouterr()
    published = out / "runs/g/gbpo/seed0"
    assert sorted(p.name for p in published.iterdir()) == ["eval_samples", "metrics.jsonl", "run.json"]
    assert (published / "eval_samples" / "arithmetic-step4.jsonl.gz").read_bytes() == b"gz"
