"""GBPO under DeepSpeed ZeRO-2 and ZeRO-3 with 2 CPU ranks (gloo; DeepSpeed builds its CPU Adam op itself).

Runs only where DeepSpeed is installed (`pip install -e '.[deepspeed]'`, as .ci/run does): the CPU install does not
need it.
"""

import importlib.util
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import check_two_rank_records, run_two_ranks
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is an optional extra: pip install -e '.[deepspeed]'",
)


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_trains_saves_and_votes_like_one_process(tiny_model_dir, tmp_path, stage):
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
        str(29540 + stage),
        "--mixed_precision",
        "no",
        "--gradient_accumulation_steps",
        "2",
    ]
    if stage == 3:
        launcher += ["--zero3_save_16bit_model", "true", "--zero3_init_flag", "false"]
    run_two_ranks(launcher, tmp_path, tiny_model_dir)
    check_two_rank_records(tmp_path, zero_stage=stage)

    trained = load_file(tmp_path / "model" / "model.safetensors")
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert set(initial) <= set(trained)
    assert all(trained[k].shape == initial[k].shape for k in initial)  # full weights, not ZeRO-3 shards
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    AutoModelForCausalLM.from_pretrained(tmp_path / "model")  # the saved model loads
