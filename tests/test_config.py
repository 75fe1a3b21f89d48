"""GBPOConfig keys beyond the loss: vote-N/train-M."""

import pytest

from gbpo import GBPOConfig

BASE = dict(
    output_dir="unused", report_to="none", bf16=False, use_cpu=True, num_generations=8, per_device_train_batch_size=8
)


def test_num_train_generations_defaults_to_all():
    assert GBPOConfig(**BASE).num_train_generations is None
    assert GBPOConfig(**BASE, num_train_generations=4).num_train_generations == 4


@pytest.mark.parametrize("bad", [1, 9])
def test_num_train_generations_out_of_range(bad):
    with pytest.raises(ValueError, match="num_train_generations must be between 2 and num_generations=8"):
        GBPOConfig(**BASE, num_train_generations=bad)


def test_num_train_generations_works_with_every_loss_type():
    # the voted-only rows leave the batch (tests/test_rows.py), so a per-sequence loss is not diluted by them
    assert GBPOConfig(**BASE, num_train_generations=4, loss_type="grpo").loss_type == "grpo"
    assert GBPOConfig(**BASE, num_train_generations=4, loss_type="dapo").loss_type == "dapo"
