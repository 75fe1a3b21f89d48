"""BenchmarkEvalCallback: the pad-and-drop split by hand, and a 2-process training run (torchrun, gloo on CPU) whose
benchmark splits unevenly, checked for equal generate calls, every problem counted once, metrics recomputed
independently, training metrics not flushed, and the trainer's state restored."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from evaluation_check import check_metrics_independently

from gbpo.evaluation.callback import pad_and_drop_shard

SCRIPT = Path(__file__).parent / "scripts" / "eval_callback_run.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("num_rows", "world", "expected"),
    [
        (3, 2, [([0, 1], 2), ([2, 2], 1)]),  # the last rank repeats its last row
        (4, 2, [([0, 1], 2), ([2, 3], 2)]),
        (1, 3, [([0], 1), ([0], 0), ([0], 0)]),  # fewer rows than processes: padding only
        (5, 3, [([0, 1], 2), ([2, 3], 2), ([4, 4], 1)]),
        (2, 1, [([0, 1], 2)]),
    ],
)
def test_pad_and_drop_shard_by_hand(num_rows, world, expected):
    assert [pad_and_drop_shard(num_rows, rank, world) for rank in range(world)] == expected


def test_pad_and_drop_shard_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank must be < world_size"):
        pad_and_drop_shard(3, 2, 2)
    with pytest.raises(ValueError, match="num_rows"):
        pad_and_drop_shard(0, 0, 1)


def test_callback_needs_eval_steps():
    from types import SimpleNamespace

    from datasets import Dataset

    from gbpo.evaluation.callback import BenchmarkEvalCallback

    trainer = SimpleNamespace(args=SimpleNamespace(eval_steps=None, max_completion_length=8))
    data = {"x": Dataset.from_list([{"prompt": "1+1=", "answer": "2"}])}
    with pytest.raises(ValueError, match="needs eval_steps"):
        BenchmarkEvalCallback(trainer, data)
    with pytest.raises(ValueError, match="lacks column"):
        BenchmarkEvalCallback(trainer, {"x": Dataset.from_list([{"prompt": "1+1="}])}, eval_steps=1)


def test_two_processes_uneven_benchmark(tiny_model_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    port = str(free_port())
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    result = subprocess.run(
        [*launcher, str(SCRIPT), str(tmp_path), str(tiny_model_dir)], env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["num_processes"] == ranks[1]["num_processes"] == 2

    # 3 evaluations (steps 1 and 2, then one by hand); 3 problems: rank 0 takes 0 and 1, rank 1 takes 2 and a repeat
    for rank in ranks:
        assert len(rank["generations"]) == len(rank["records"]) == 3
    for g0, g1 in zip(ranks[0]["generations"], ranks[1]["generations"], strict=True):
        assert len(g0["prompts"]) == len(g1["prompts"]) == 2
        assert g0["generate_calls"] == g1["generate_calls"] == 2  # 2 prompts x 2 samples, 2 sequences per call
        assert "What is 0 + 0?" in g0["prompts"][0] and "What is 1 + 1?" in g0["prompts"][1]
        assert "What is 2 + 2?" in g1["prompts"][0] and g1["prompts"][1] == g1["prompts"][0]

    # the logged metrics: the same on both ranks, from problems 0, 1, 2 once each (the repeat dropped)
    logged = [[e for e in rank["log_history"] if "eval/sums/pass@1" in e] for rank in ranks]
    assert [e["step"] for e in logged[0]] == [1, 2]
    for i, (e0, e1) in enumerate(zip(*logged, strict=True)):
        assert e0 == e1
        metric_keys = {"eval/sums/pass@1", "eval/sums/pass@2", "eval/sums/maj@1", "eval/sums/maj@2"}
        metric_keys |= {"eval/sums/pass@1_ci95_low", "eval/sums/pass@1_ci95_high"}
        assert set(e0) == metric_keys | {"step", "epoch"}
        records = ranks[0]["records"][i] + ranks[1]["records"][i][:1]
        assert [r["answer"] for r in records] == ["0", "2", "4"]
        check_metrics_independently(records, e0, n=2, fallback_last_number=True, prefix="eval/sums/")
    extra = ranks[0]["after"]["extra_metrics"]
    check_metrics_independently(
        ranks[0]["records"][2] + ranks[1]["records"][2][:1], extra, n=2, fallback_last_number=True, prefix="eval/sums/"
    )

    # training metrics still logged every step: the evaluation did not flush them into its own entry
    for rank in ranks:
        train_logs = [e for e in rank["log_history"] if "reward" in e]
        assert [e["step"] for e in train_logs] == [1, 2]
        assert not any("reward" in e for e in rank["log_history"] if "eval/sums/pass@1" in e)
        after = rank["after"]
        assert after["training"] and after["torch_rng_restored"] and after["python_rng_restored"]
        assert after["gradient_checkpointing"] and after["use_reentrant"] is False  # TRL's kwargs, not the default
        assert after["eval_strategy"] in ("no", "IntervalStrategy.NO")  # the trainer's args untouched
