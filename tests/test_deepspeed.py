"""GBPO under DeepSpeed ZeRO-2 and ZeRO-3 with 2 CPU ranks (gloo; DeepSpeed builds its CPU Adam op itself).

Runs only where DeepSpeed is installed (`pip install -e '.[deepspeed]'`, as .ci/run does): the CPU install does not
need it.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from test_distributed import check_two_rank_records, free_port, run_two_ranks
from test_train import assert_trained_model_saved, tiny_recipe

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is an optional extra: pip install -e '.[deepspeed]'",
)


def accelerate_launch(stage: int) -> list[str]:
    # No --cpu with --use_deepspeed: accelerate would then run one process. CUDA is hidden by run_two_ranks.
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--use_deepspeed",
        "--zero_stage",
        str(stage),
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        "no",
    ]
    if stage == 3:
        launcher += ["--zero3_save_16bit_model", "true", "--zero3_init_flag", "false"]
    return launcher


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_votes_and_target_ratios_equal_one_process(tiny_model_dir, tmp_path, stage):
    run_two_ranks([*accelerate_launch(stage), "--gradient_accumulation_steps", "3"], tmp_path, tiny_model_dir)
    check_two_rank_records(tmp_path, zero_stage=stage)


@pytest.mark.parametrize("stage", [2, 3])
def test_gbpo_train_under_zero_saves_a_trained_model_that_loads(tiny_model_dir, tmp_path, stage):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, per_device_train_batch_size=4, max_steps=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [*accelerate_launch(stage), "-m", "gbpo.train", str(recipe)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Exception ignored" not in result.stderr, result.stderr[-4000:]  # a clean exit, groups ended in order
    out = tmp_path / "out"
    assert_trained_model_saved(out, tiny_model_dir)  # gathered full weights under ZeRO-3, trained, loadable
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("gbpo/ratio/mean" in m for m in steps) == 2
