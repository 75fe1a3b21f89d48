"""benchmarks/precision.py on the tiny model (--quick): every precision's figures, exact ratio 1 without an update,
and one real optimizer step that moves the fp32 ratio."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "precision.py"


def test_quick_run_reports_every_precision(tmp_path, tiny_model_dir):
    out = tmp_path / "precision.json"
    # a large learning rate so that the tiny model's step shows in fp32 (the CPU default's 2e-6 barely moves it)
    command = [sys.executable, str(SCRIPT), "--quick", "--model", str(tiny_model_dir), "--learning-rate", "0.01",
               "--output", str(out)]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert isinstance(report["cpu"]["avx512_bf16"], bool) and report["cpu"]["model_name"]
    assert report["weights_moved"] > 0 and report["loss_tokens"] > 0 and report["learning_rate"] == 0.01
    figures = report["precisions"]
    assert list(figures) == ["fp32", "bf16 autocast", "bf16 weights", "bf16 + fp32 head", "fp16 autocast"]
    for name, f in figures.items():
        assert f["no_update_max_abs_log_rho"] == 0.0, name  # old against old: the ratio is exactly 1
        assert 0 < f["rho_min"] <= 1 <= f["rho_max"] and math.isfinite(f["mean_abs_log_rho"]), name
        assert 0 <= f["outside_bounds"] <= 1, name
    assert figures["fp32"]["mean_abs_log_rho"] > 0 and figures["fp32"]["logp_error_vs_fp32"] == 0
    # a lower precision computes other log-probs than fp32 on the same weights (its own error), never none
    for name in ("bf16 autocast", "bf16 weights", "bf16 + fp32 head", "fp16 autocast"):
        assert figures[name]["logp_error_vs_fp32"] > 0, name
    assert "| bf16 weights |" in result.stdout and "avx512_bf16" in result.stdout
