"""benchmarks/memory.py: a tiny real run prints one line per phase and the table, with peaks that never fall."""

import re
import subprocess
import sys
from pathlib import Path

from test_train import tiny_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_memory_phases_of_a_tiny_run(tmp_path, tiny_model_dir):
    # 2 optimizer steps of 2 micro-batches each: 2 generations (num_iterations 1, steps_per_generation 2)
    path = tiny_recipe(tmp_path, tiny_model_dir, gradient_accumulation_steps=2, per_device_train_batch_size=2)
    command = [sys.executable, str(ROOT / "benchmarks" / "memory.py"), str(path), "--max_steps", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = re.findall(
        r"^\| ([^|]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", result.stdout, re.M
    )
    phases = [row[0] for row in rows]
    assert phases[:4] == [
        "start",
        "torch imported",
        "gbpo, TRL (and vLLM) imported",
        "trainer built (model, vLLM engine)",
    ]
    assert phases[-1] == "end"
    # every wrapped call is seen, the first three of each: 4 micro-batches of 2 rows, 2 optimizer steps, and 2
    # generations of one prompt x 4 completions (steps_per_generation = gradient_accumulation_steps = 2)
    assert [p for p in phases if p.startswith("after training_step")] == [
        f"after training_step #{i}" for i in (1, 2, 3)
    ]
    assert [p for p in phases if p.startswith("after optimizer step")] == [
        "after optimizer step 1",
        "after optimizer step 2",
    ]
    assert [p for p in phases if p.startswith("after _generate")] == [
        "after _generate_and_score_completions #1",
        "after _generate_and_score_completions #2",
    ]
    rss, peak = [float(row[1]) for row in rows], [float(row[2]) for row in rows]
    assert all(p >= r for p, r in zip(peak, rss, strict=True))
    assert peak == sorted(peak) and peak[-1] > peak[0] > 0
    # the model and trainer take memory: the peak after the trainer is built is above the bare interpreter's
    assert peak[3] > peak[1] > peak[0]
