"""gbpo.compare: commands per group x method x seed, and the report's numbers on hand-written metrics.jsonl files."""

import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from gbpo.compare import load_settings, main, run_commands, summarise_run

SETTINGS = {
    "recipe": "recipes/smollm2_cpu.yaml",
    "seeds": [0, 1],
    "common": {"max_steps": 4, "eval_benchmarks": ["arithmetic"]},
    "groups": {"reference": {}, "stress": {"learning_rate": 1e-4, "epsilon": 0.5}},
    "methods": {"gbpo": {"loss_type": "gbpo"}, "grpo": {"loss_type": "dapo"}, "r2vpo": {"loss_type": "r2vpo"}},
}


def write_settings(tmp_path, settings=SETTINGS):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_one_train_command_per_group_method_seed(tmp_path):
    runs = run_commands(load_settings(write_settings(tmp_path)), tmp_path / "out")
    assert len(runs) == 2 * 3 * 2
    run_dir, command = runs[-1]  # stress / r2vpo / seed 1: group keys override common ones, method keys both
    assert run_dir == tmp_path / "out" / "runs" / "stress" / "r2vpo" / "seed1"
    assert command[:4] == [sys.executable, "-m", "gbpo.train", "recipes/smollm2_cpu.yaml"]
    flags = command[4:]
    pairs = dict(zip(flags[::2], flags[1::2], strict=True))
    assert pairs == {"--max_steps": "4", "--eval_benchmarks": "arithmetic", "--learning_rate": "0.0001",
                     "--epsilon": "0.5", "--loss_type": "r2vpo", "--seed": "1", "--output_dir": str(run_dir),
                     "--overwrite_output_dir": "true"}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": {"x": {}}}, "method 'x' has no loss_type"),
        ({"seeds": []}, "seeds"),
        ({"groups": {}}, "groups"),
        ({"groups": {"a": {"methods": ["gbpo", "ppo"]}}}, "group 'a': methods must be a list of names from methods"),
        ({"groups": {"a": {"seeds": [0.5]}}}, "group 'a': seeds must be a list of integers"),
        ({"sweep": "num_iterations"}, "group 'reference' sets no 'num_iterations', the sweep key"),
    ],
)
def test_bad_settings_are_named(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        load_settings(write_settings(tmp_path, {**SETTINGS, **change}))


def fake_run(run_dir, rewards, labels, ratio_max, entropy, loss="gbpo", extra=None, ratio_key="gbpo/ratio/max"):
    """A metrics.jsonl as gbpo.train writes it: generation steps log rewards, every step logs the loss metrics."""
    run_dir.mkdir(parents=True)
    lines = []
    for step in range(1, len(ratio_max) + 1):
        entry = {"step": step, "loss": 0.1, "entropy": entropy[step - 1], ratio_key: ratio_max[step - 1]}
        if step % 2 == 1:
            entry |= {"reward": rewards[step // 2], "ttrl/label_accuracy": labels[step // 2]}
            entry["ttrl/majority_ratio"] = 0.5
        entry |= (extra or {}).get(step, {})
        lines.append(json.dumps(entry))
    lines.append(json.dumps({"step": len(ratio_max), "eval/arithmetic/pass@1": 0.25, "eval/arithmetic/maj@2": 0.5,
                             "eval/arithmetic/maj@4": 0.75, "eval/arithmetic/pass@4": 0.6,
                             "eval/arithmetic/pass@1_ci95_low": 0.1,
                             "eval/arithmetic/pass@1_ci95_high": 0.4}))  # fmt: skip
    lines.append(json.dumps({"train_runtime": 12.5, "train_loss": 0.1, "step": len(ratio_max)}))  # the closing entry
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_summary_by_hand(tmp_path):
    run = tmp_path / "run"
    extra = {4: {"r2vpo/lambda": 1.7}}
    fake_run(run, rewards=[0.8, 0.5, 0.3], labels=[0.5, 0.75, 0.25], ratio_max=[1.0, 1.2, 3.5, 1.1, 1.0],
             entropy=[0.9, 0.8, 0.7, 0.6, 0.4], loss="r2vpo", extra=extra, ratio_key="r2vpo/ratio/max")  # fmt: skip
    s = summarise_run(run, "r2vpo")
    assert s["label_accuracy_final"] == 0.25 and s["label_accuracy_best"] == 0.75
    assert s["majority_ratio"] == 0.5 and s["entropy_end"] == 0.4 and s["ratio_max"] == 3.5
    assert s["collapse_step"] == 5  # reward 0.3 < 0.5 * 0.8 at step 5 (0.5 at step 3 is not below 0.4)
    assert (s["eval_pass@1"], s["eval_maj@k"], s["eval_pass@k"]) == (0.25, 0.75, 0.6)  # the largest k
    assert (s["eval_ci95_low"], s["eval_ci95_high"]) == (0.1, 0.4)
    assert s["final_r2vpo_lambda"] == 1.7
    # gbpo/ratio/max is every loss type's name (an older run's r2vpo/ratio/max above is still read)
    fake_run(tmp_path / "grpo", rewards=[0.5, 0.6], labels=[0.5, 0.5], ratio_max=[1, 2.5, 1], entropy=[1, 1, 1])
    s = summarise_run(tmp_path / "grpo", "dapo")
    assert s["ratio_max"] == 2.5 and s["collapse_step"] is None and "epsilon_min" not in s
    extra = {1: {"ppo_br/epsilon": 0.4}, 2: {"ppo_br/epsilon": 0.31}, 3: {"ppo_br/epsilon": 0.35}}
    fake_run(tmp_path / "ppo_br", [0.5, 0.6], [0.5, 0.5], [1, 1, 1], [1, 1, 1], loss="ppo_br", extra=extra)
    s = summarise_run(tmp_path / "ppo_br", "ppo_br")
    assert (s["epsilon_min"], s["epsilon_max"], s["final_ppo_br_epsilon"]) == (0.31, 0.4, 0.35)
    fake_run(tmp_path / "old", [0.5, 0.6], [0.5, 0.5], [1, 1, 1], [1, 1, 1], loss="dapo", ratio_key="unrelated")
    assert summarise_run(tmp_path / "old", "dapo")["ratio_max"] is None  # not logged: shown as n/a


def test_report_only_writes_tables_and_figures(tmp_path, capsys):
    settings = {
        **SETTINGS,
        "common": {"max_steps": 3},
        "groups": {"reference": {}},
        "methods": {"gbpo": {"loss_type": "gbpo"}},
    }
    out = tmp_path / "out"
    fake_run(out / "runs/reference/gbpo/seed0", [0.4, 0.6], [0.5, 1.0], [1.1, 1.3, 1.2], [0.9, 0.8, 0.7])
    fake_run(out / "runs/reference/gbpo/seed1", [0.4, 0.1], [0.5, 0.0], [1.1, 2.0, 1.2], [0.9, 0.8, 0.5])
    path = write_settings(tmp_path, settings)
    report = main([str(path), "--output-dir", str(out), "--report-only"])
    capsys.readouterr()
    text = report.read_text()
    # label acc. final: mean(100, 0) = 50; best: mean(100, 50) = 75; largest ratio mean(1.3, 2.0) = 1.65; seed 1
    # collapses at step 3 (0.1 < 0.2), seed 0 never: the mean is over the seeds where it happened
    row = next(line for line in text.splitlines() if line.startswith("| gbpo (gbpo)"))
    assert row == ("| gbpo (gbpo) | 50 (100, 0) | 75 (100, 50) | 50 (50, 50) | 25 (25, 25) | 75 (75, 75) | "
                   "60 (60, 60) | 0.6 (0.7, 0.5) | 1.65 (1.3, 2) | 3 (-, 3) | 10-40; 10-40 | n/a |")  # fmt: skip
    assert "Every run is in." in text
    assert (out / "reference_reward.png").read_bytes()[:4] == b"\x89PNG"
    assert "reference_state.png" not in text  # GBPO has no lambda / eps_t curve
    (out / "runs/reference/gbpo/seed1/metrics.jsonl").unlink()  # seed 0 alone: no collapse is "-", not "n/a"
    text = main([str(path), "--output-dir", str(out), "--report-only"]).read_text()
    capsys.readouterr()
    row = next(line for line in text.splitlines() if line.startswith("| gbpo (gbpo) (1 run(s) missing)"))
    assert row.endswith("| 1.3 (1.3) | - | 10-40 | n/a |")
    assert "Runs missing or unfinished (1): reference/gbpo/seed1." in text
    main([str(path), "--output-dir", str(out), "--dry-run"])  # seed 0 is finished: only seed 1 would run
    (printed,) = capsys.readouterr().out.splitlines()
    assert shlex.split(printed)[2:4] == ["gbpo.train", "recipes/smollm2_cpu.yaml"]
    assert printed.endswith(f"--seed 1 --output_dir {out}/runs/reference/gbpo/seed1 --overwrite_output_dir true")
    main([str(path), "--output-dir", str(out), "--dry-run", "--seeds", "0"])
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit):
        main([str(path), "--output-dir", str(out), "--dry-run", "--groups", "stress"])
    assert "unknown group(s) ['stress']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(path), "--output-dir", str(out), "--dry-run", "--methods", "ppo"])
    assert "unknown method(s) ['ppo']" in capsys.readouterr().err


def test_a_run_stopped_early_is_resumed_and_left_out_of_the_report(tmp_path, capsys):
    """A SIGTERM'd run also writes metrics.jsonl with a closing entry, at the step it reached: not finished."""
    settings = {
        **SETTINGS,
        "common": {"max_steps": 5},
        "groups": {"reference": {}},
        "methods": {"gbpo": {"loss_type": "gbpo"}},
    }
    out = tmp_path / "out"
    fake_run(out / "runs/reference/gbpo/seed0", [0.4, 0.6, 0.6], [0.5, 1.0, 1.0], [1.1] * 5, [0.9] * 5)
    stopped = out / "runs/reference/gbpo/seed1"
    fake_run(stopped, [0.4, 0.6], [0.5, 1.0], [1.1] * 3, [0.9] * 3)  # closing entry at step 3 of 5
    path = write_settings(tmp_path, settings)
    main([str(path), "--output-dir", str(out), "--dry-run"])
    (printed,) = capsys.readouterr().out.splitlines()  # no checkpoint: seed 1 starts afresh
    assert printed.endswith(f"--output_dir {stopped} --overwrite_output_dir true")
    (stopped / "checkpoint-2").mkdir()  # cut off mid-save (no trainer_state.json): not resumable
    (stopped / "checkpoint-3").mkdir()
    (stopped / "checkpoint-3" / "trainer_state.json").write_text("{}")
    main([str(path), "--output-dir", str(out), "--dry-run"])
    (printed,) = capsys.readouterr().out.splitlines()
    assert printed.endswith(f"--output_dir {stopped} --resume_from_checkpoint true")
    text = main([str(path), "--output-dir", str(out), "--report-only"]).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| gbpo (gbpo)"))
    assert row.startswith("| gbpo (gbpo) (1 run(s) unfinished) | 100 (100) |")


SWEEP = {
    "recipe": "recipes/smollm2_cpu.yaml",
    "seeds": [0, 1],
    "sweep": "num_iterations",
    "common": {"eval_benchmarks": ["arithmetic"]},
    "groups": {
        "epochs1": {"num_iterations": 1, "max_steps": 3, "methods": ["gbpo", "ppo_br"]},
        "epochs8": {"num_iterations": 8, "max_steps": 3, "seeds": [0, 1, 2]},
    },
    "methods": {"gbpo": {"loss_type": "gbpo"}, "grpo": {"loss_type": "dapo"}, "ppo_br": {"loss_type": "ppo_br"}},
}


def test_groups_choose_methods_and_seeds_and_the_sweep_figure(tmp_path, monkeypatch, capsys):
    """Groups name their own methods and seeds; runs train in --work-dir and their metrics are copied to the output
    directory run by run (--max-runs); the sweep figure shows avg@k after training against num_iterations."""
    import gbpo.compare

    settings = load_settings(write_settings(tmp_path, SWEEP))
    runs = run_commands(settings, tmp_path / "out")
    names = [str(d.relative_to(tmp_path / "out" / "runs")) for d, _ in runs]
    assert names == [  # seed by seed, the methods of one seed side by side
        "epochs1/gbpo/seed0", "epochs1/ppo_br/seed0", "epochs1/gbpo/seed1", "epochs1/ppo_br/seed1",
        *[f"epochs8/{m}/seed{s}" for s in range(3) for m in ("gbpo", "grpo", "ppo_br")],
    ]  # fmt: skip
    assert "--methods" not in runs[0][1] and "--seeds" not in runs[0][1]  # the study's keys are not gbpo.train's
    flags = runs[-1][1]
    assert flags[flags.index("--num_iterations") + 1] == "8"

    trained = []

    def fake_train(command, log):  # what gbpo.train leaves in its output_dir: a finished run's metrics.jsonl
        run_dir = Path(command[command.index("--output_dir") + 1])
        trained.append(run_dir)
        fake_run(run_dir, [0.4, 0.6], [0.5, 1.0], [1.1, 1.2, 1.3], [0.9, 0.8, 0.7])

    monkeypatch.setattr(gbpo.compare, "_run", fake_train)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [str(write_settings(tmp_path, SWEEP)), "--output-dir", str(out), "--work-dir", str(work)]
    text = main([*argv, "--max-runs", "2", "--groups", "epochs8"]).read_text()
    assert trained == [work / "runs/epochs8/gbpo/seed0", work / "runs/epochs8/grpo/seed0"]
    assert (out / "runs/epochs8/grpo/seed0/metrics.jsonl").read_text() == (trained[1] / "metrics.jsonl").read_text()
    assert not (out / "runs/epochs8/grpo/seed0/checkpoint-1").exists()
    assert "Runs missing or unfinished (11): epochs1/gbpo/seed0," in text
    capsys.readouterr()
    main([*argv, "--dry-run"])
    assert len(capsys.readouterr().out.splitlines()) == 13 - 2
    main(argv)
    capsys.readouterr()
    assert len(trained) == 13
    text = (out / "report.md").read_text()
    assert (
        "Every run is in." in text and "![avg@k after training against num_iterations](num_iterations_avg.png)" in text
    )
    assert (out / "num_iterations_avg.png").read_bytes()[:4] == b"\x89PNG"
    row = next(line for line in text.splitlines() if line.startswith("| ppo_br (ppo_br)"))
    assert row.startswith("| ppo_br (ppo_br) | 100 (100, 100) |")  # epochs1's two seeds
