"""benchmarks/cpu.py: end to end on the tiny model with tiny shapes (no training runs), and its training-run summary
and table on a hand-written run, since the end-to-end check leaves the training runs out."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "cpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_cpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_quick_run_reports_every_figure(tmp_path, tiny_model_dir):
    out = tmp_path / "cpu.json"
    command = [
        sys.executable, str(SCRIPT), "--quick", "--model", str(tiny_model_dir), "--skip-training-runs",
        "--output", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(out.read_text())

    cpu = report["cpu"]
    assert isinstance(cpu["model_name"], str) and cpu["model_name"]
    assert isinstance(cpu["amx_bf16"], bool) and isinstance(cpu["avx512_bf16"], bool)
    assert cpu["torch_threads"] >= 1 and cpu["logical_cpus"] >= 1

    assert report["matmul_peak"]["size"] == 128
    assert all(positive(report["matmul_peak"]["gflops"][p]) for p in ("fp32", "bf16"))
    assert all(positive(report["auto_probe"]["gflops"][p]) for p in ("fp32", "bf16"))
    assert report["auto_probe"]["choice"] in ("fp32", "bf16")

    shape = report["shape"]
    assert (shape["rows"], shape["prompt_tokens"], shape["completion_tokens"], shape["tokens_per_row"]) == (
        4,
        16,
        8,
        24,
    )
    assert positive(shape["matmul_params"])
    assert shape["flops_per_call"] == 6 * shape["matmul_params"] * 4 * 24
    # the recipe's layout: 16 rows per optimizer step, each trained twice
    assert (shape["rows_per_optimizer_step"], shape["num_iterations"]) == (16, 2)

    assert sorted(report["steps"]) == ["bf16", "fp32"]
    for precision, figures in report["steps"].items():
        for key in (
            "bare_seconds", "bare_gflops", "bare_peak_fraction",
            "trainer_seconds", "trainer_gflops", "trainer_peak_fraction", "trainer_over_bare",
        ):  # fmt: skip
            assert positive(figures[key]), (precision, key, figures[key])
        assert figures["bare_samples"] == figures["trainer_samples"] == 1  # --quick: one timed call after a warm-up
        assert math.isclose(figures["trainer_over_bare"], figures["trainer_seconds"] / figures["bare_seconds"])

    assert positive(report["process_peak_rss_bytes"])
    assert report["training_runs"] is None
    assert (report["rss_target_bytes"], report["ratio_target"]) == (4 * 10**9, 1.25)

    printed = result.stdout
    assert "| figure | fp32 | bf16 autocast | dtype auto | note |" in printed
    assert "| trainer / bare |" in printed and "| training runs | skipped |" in printed


def test_training_run_summary_and_table(tmp_path):
    cpu = load_script()
    metrics = tmp_path / "metrics.jsonl"
    lines = [
        {"loss": 0.1, "reward": 0.5, "completions/mean_length": 40.0, "step_time": 60.0, "step": 1},
        {"loss": 0.2, "step_time": 15.0, "step": 2},
        {"loss": 0.3, "step_time": 17.0, "step": 3},
        {"train_runtime": 120.0, "train_loss": 0.2, "step": 3},
    ]
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = cpu.summarize_run(metrics, rows_per_step=16, num_iterations=2)
    assert summary == {
        "steps": 3,
        "trained_completions": 24.0,  # 3 steps x 16 rows / 2 iterations
        "train_runtime_seconds": 120.0,
        "completions_per_minute": 12.0,
        "generating_step_seconds": 60.0,
        "training_only_step_seconds": 16.0,
        "mean_completion_tokens": 40.0,
    }

    line = (
        "dtype auto: bf16 matmuls 0.7 GFLOP/s, fp32 49.6 GFLOP/s (0.01x; bf16 needs >= 1.5x): fp32 (bf16 is not faster "
        "here). Training in fp32 over fp32 weights, generating in float32."
    )
    assert cpu.precision_choice(f"loading\n{line}\nstep 1", "auto") == "fp32"
    # the mixed mode generates in bf16 but trains in fp32; a user's bf16: true trains under autocast
    mixed = line.replace("generating in float32", "generating in bfloat16")
    assert cpu.precision_choice(mixed, "auto") == "fp32"
    autocast = line.replace("Training in fp32", "Training in bf16 autocast")
    assert cpu.precision_choice(autocast, "auto") == "bf16"
    assert cpu.precision_choice("no dtype line", "bf16") == "bf16"

    run = {"returncode": 0, "wall_seconds": 200.0, "peak_rss_bytes": 3 * 10**9, "peak_tree_rss_bytes": 5 * 10**9}
    results = {
        "cpu": {"model_name": "Some CPU", "amx_bf16": False, "avx512_bf16": False, "logical_cpus": 2},
        "steps": {},
        "training_run_settings": {"max_steps": 3},
        "training_runs": {"fp32": {**run, **summary, "trained_in": "fp32"}, "auto": {**run, "returncode": 1}},
    }
    text = cpu.table(results)
    assert "| run: completions/min | 12.0 | - | - |" in text
    assert "| run: exit status | 0 | - | 1 |" in text
    assert "| run: peak RSS GB | 3.00 | - | 3.00 |" in text
    assert "| run: within 4 GB | no | - | no |" in text  # the tree's 5 GB


def test_process_tree_rss_of_this_process():
    cpu = load_script()
    assert os.getpid() in cpu.process_tree(os.getpid())
    assert cpu.rss_bytes(os.getpid()) > 0
    assert cpu.rss_bytes(2**22 + 12345) == 0  # no such process
