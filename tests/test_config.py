"""GBPOConfig: defaults per loss type (GBPO's for "gbpo", GRPOConfig's for a TRL loss type) and vote-N/train-M."""

import pytest
from trl import GRPOConfig, TrlParser

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


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo", "dr_grpo", "cispo"])
def test_config_defaults_of_a_trl_loss_type_are_grpo_config_defaults(loss_type):
    ours = GBPOConfig(output_dir="unused", use_cpu=True, loss_type=loss_type).to_dict()
    theirs = GRPOConfig(output_dir="unused", loss_type=loss_type, use_cpu=True).to_dict()
    assert {k: ours[k] for k in theirs if ours[k] != theirs[k]} == {}


def test_epsilon_default_depends_on_the_loss_type():
    assert GBPOConfig(output_dir="unused", use_cpu=True).epsilon == 0.3  # GBPO reference
    assert (
        GBPOConfig(output_dir="unused", use_cpu=True, loss_type="grpo").epsilon
        == GRPOConfig(output_dir="unused", use_cpu=True).epsilon
        == 0.2
    )


def test_explicit_epsilon_is_kept_for_every_loss_type():
    for loss_type in ("gbpo", "grpo", "dapo"):
        assert GBPOConfig(output_dir="unused", use_cpu=True, loss_type=loss_type, epsilon=0.25).epsilon == 0.25
    assert GBPOConfig(output_dir="unused", use_cpu=True, loss_type="gbpo", epsilon=0.2).epsilon == 0.2


def test_command_line_epsilon_and_its_help():
    parser = TrlParser((GBPOConfig,))
    help_text = " ".join(parser.format_help().split())
    assert "0.3 (GBPO reference) with loss_type 'gbpo', TRL's 0.2 otherwise" in help_text
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", "unused", "--use_cpu", "true", "--loss_type", "dapo"])
    assert args.epsilon == 0.2
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", "unused", "--use_cpu", "true", "--epsilon", "0.25"])
    assert (args.loss_type, args.epsilon) == ("gbpo", 0.25)
