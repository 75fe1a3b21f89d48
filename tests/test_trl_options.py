"""GBPOTrainer as a drop-in for TRL scripts (issue 35): environment-owned rewards, TRL's metrics for every loss type,
GBPO with TRL's options (sequence-level ratio, normalize-then-sum, adaptive entropy), and bad values caught at
construction."""

import inspect
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import trl
from test_trainer import char_code_reward, digit_reward, load, params, prompts_dataset
from tiny import CPU_RUN
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from gbpo import GBPOConfig, GBPOTrainer
from gbpo.config import CHOICES, TRL_LOSS_TYPES
from gbpo.loss import gbpo_per_token_loss
from gbpo.trl_options import gbpo_sequence_loss, normalize_then_sum_rewards, sequence_ratio

RUN = dict(per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=2, learning_rate=0.05,
           temperature=1.0, **CPU_RUN)  # fmt: skip


def run(cls, config_cls, tiny_model_dir, tmp_path, reward=digit_reward, **overrides):
    model, tokenizer = load(tiny_model_dir)
    args = config_cls(output_dir=str(tmp_path), **{**RUN, **overrides})
    trainer = cls(model=model, reward_funcs=reward, args=args, train_dataset=prompts_dataset(),
                  processing_class=tokenizer)  # fmt: skip
    trainer.train()
    return trainer


# ---------------------------------------------------------------- 1. rewards owned by an environment


class CoinEnv:
    """An environment with no tools that owns its reward: every other rollout (over all instances) scores 1."""

    rollouts = 0

    def reset(self, **kwargs):
        CoinEnv.rollouts += 1
        self.reward = float(CoinEnv.rollouts % 2)

    def get_reward(self):
        return self.reward


class NoRewardEnv:
    def reset(self, **kwargs):
        return None


def tool_tokenizer(tiny_model_dir):
    """The tiny tokenizer with a chat template that renders tool calls (TRL requires one with environments)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    return tokenizer


def test_environment_owned_reward_trains_without_reward_funcs(tiny_model_dir, tmp_path):
    assert inspect.signature(GBPOTrainer.__init__).parameters["reward_funcs"].default is None  # as TRL's
    model, _ = load(tiny_model_dir)
    args = GBPOConfig(output_dir=str(tmp_path), **RUN)
    trainer = GBPOTrainer(model=model, args=args, train_dataset=prompts_dataset(), environment_factory=CoinEnv,
                          processing_class=tool_tokenizer(tiny_model_dir))  # fmt: skip
    before = params(trainer.model)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "rewards/CoinEnv/mean" in e]
    assert len(logs) == 2 and all(e["rewards/CoinEnv/mean"] == pytest.approx(0.5) for e in logs)
    after = params(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the environment's reward moved the weights


def test_no_reward_source_is_trls_error(tiny_model_dir, tmp_path):
    model, _ = load(tiny_model_dir)
    messages = []
    for cls, config_cls in ((GRPOTrainer, GRPOConfig), (GBPOTrainer, GBPOConfig)):
        args = config_cls(output_dir=str(tmp_path), **RUN)
        with pytest.raises(ValueError, match="No reward source provided") as error:
            cls(model=model, args=args, train_dataset=prompts_dataset(), environment_factory=NoRewardEnv,
                processing_class=tool_tokenizer(tiny_model_dir))  # fmt: skip
        messages.append(str(error.value))
    assert messages[0] == messages[1]


# ---------------------------------------------------------------- 2. TRL's metrics, for every loss type

CONFIGS = {
    "entropy bonus": dict(entropy_coef=0.01),
    "adaptive entropy": dict(entropy_coef=0.01, use_adaptive_entropy=True),
    "kl and iterations": dict(beta=0.04, num_iterations=2),
    "multi-reward": dict(reward=[digit_reward, char_code_reward], reward_weights=[1.0, 0.5]),
}


@pytest.mark.parametrize("config", CONFIGS)
def test_every_metric_trl_logs_is_logged_for_every_loss_type(tiny_model_dir, tmp_path, config):
    overrides = dict(CONFIGS[config])
    reward = overrides.pop("reward", digit_reward)
    trl_run = run(GRPOTrainer, GRPOConfig, tiny_model_dir, tmp_path / "trl", reward=reward, **overrides)
    trl_keys = {k for e in trl_run.state.log_history if "loss" in e for k in e}
    assert "entropy_coef" in trl_keys or "entropy_coef" not in overrides
    for loss_type in ("gbpo", "r2vpo", "ppo_br"):
        ours = run(GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path / loss_type, reward=reward, loss_type=loss_type,
                   **overrides)  # fmt: skip
        for entry in (e for e in ours.state.log_history if "loss" in e):  # every step, as TRL logs them
            missing = {k for e in trl_run.state.log_history if "loss" in e and e["step"] == entry["step"] for k in e}
            assert missing - set(entry) == set(), (loss_type, entry["step"])
        assert trl_keys <= {k for e in ours.state.log_history for k in e}


def test_adaptive_entropy_moves_the_coefficient_as_trls_controller(tiny_model_dir, tmp_path):
    # entropy_target above any entropy of the tiny model: the controller raises the coefficient at every step
    keys = dict(entropy_coef=0.01, use_adaptive_entropy=True, entropy_target=100.0, entropy_coef_delta=0.002,
                entropy_coef_max=0.014, max_steps=3)  # fmt: skip
    trl_run = run(GRPOTrainer, GRPOConfig, tiny_model_dir, tmp_path / "trl", **keys)
    ours = run(GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path / "gbpo", **keys)
    coefs = [[e["entropy_coef"] for e in t.state.log_history if "entropy_coef" in e] for t in (trl_run, ours)]
    assert coefs[0] == pytest.approx([0.012, 0.014, 0.014]) and coefs[1] == pytest.approx(coefs[0])


# ---------------------------------------------------------------- 3. GBPO on the sequence ratio


def two_group_batch():
    """2 groups of 2 completions, 3 token slots; the second completion of each group has 2 loss tokens."""
    old = torch.full((4, 3), -1.0)
    new = old + torch.tensor([[0.3, -0.1, 0.1], [0.2, 0.4, 9.0], [-0.2, -0.4, 0.0], [0.6, 0.0, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]])
    advantages = torch.tensor([0.7, -0.7, 1.0, -1.0])
    targets = torch.tensor([1.3, 0.7, 1.3, 0.7])
    return new, old, mask, advantages, targets


def test_sequence_loss_by_hand():
    new, old, mask, advantages, targets = two_group_batch()
    ratio = sequence_ratio(new, old, mask)
    # mean log-ratio over each completion's loss tokens (the masked 9.0 / -9.0 never count)
    expected = torch.exp(torch.tensor([0.1, 0.3, -0.2, 0.3])).unsqueeze(1)
    torch.testing.assert_close(ratio, expected)
    loss = gbpo_sequence_loss(new, old, mask, advantages, targets)
    by_hand = [0.7 * abs(1.1052 - 1.3), 0.7 * abs(1.3499 - 0.7), 1.0 * abs(0.8187 - 1.3), 1.0 * abs(1.3499 - 0.7)]
    assert loss.squeeze(1).tolist() == pytest.approx(by_hand, abs=1e-4)
    assert gbpo_sequence_loss(new, old, mask, advantages, targets, tv_coef=0.5).squeeze(1).tolist() == pytest.approx(
        [(a + 0.5) * abs(r - t) for a, r, t in zip([0.7, 0.7, 1.0, 1.0], [1.1052, 1.3499, 0.8187, 1.3499],
                                                    [1.3, 0.7, 1.3, 0.7], strict=True)], abs=1e-4)  # fmt: skip


def test_sequence_loss_gradient_sign_and_size():
    new, old, mask, advantages, targets = two_group_batch()
    logps = new.clone().requires_grad_(True)
    gbpo_sequence_loss(logps, old, mask, advantages, targets).sum().backward()
    s = sequence_ratio(new, old, mask).squeeze(1)
    # d/dlogp_t |A| |s - r*| = |A| sign(s - r*) s / n on each of the n loss tokens; 0 on padding
    sign = torch.sign(s - targets)
    n = mask.sum(1)
    expected = (advantages.abs() * sign * s / n).unsqueeze(1) * mask
    torch.testing.assert_close(logps.grad, expected)
    assert logps.grad[0, 0] < 0 and logps.grad[1, 0] > 0  # below its target: pushed up; above: pulled back down
    assert logps.grad[1, 2] == 0 and logps.grad[3, 2] == 0


def test_sequence_loss_equals_token_loss_with_one_token_per_completion():
    new, old, _, advantages, targets = two_group_batch()
    new, old, mask = new[:, :1], old[:, :1], torch.ones(4, 1)
    torch.testing.assert_close(
        gbpo_sequence_loss(new, old, mask, advantages, targets), gbpo_per_token_loss(new, old, advantages, targets)
    )


def test_sequence_level_gbpo_trains_and_logs_the_sequence_ratio(tiny_model_dir, tmp_path):
    trainer = run(GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path, importance_sampling_level="sequence",
                  num_iterations=2, max_steps=3)  # fmt: skip
    logs = [e for e in trainer.state.log_history if "gbpo/ratio/max" in e]
    assert len(logs) == 3 and logs[0]["gbpo/ratio/max"] == pytest.approx(1.0)
    assert logs[1]["gbpo/ratio/max"] != pytest.approx(1.0)  # the second pass sees the moved sequence ratio
    with pytest.raises(
        ValueError, match="importance_sampling_level='sequence' is not supported with loss_type='r2vpo'"
    ):
        GBPOConfig(output_dir=str(tmp_path), loss_type="r2vpo", importance_sampling_level="sequence", **CPU_RUN)


# ---------------------------------------------------------------- 4. normalize_then_sum under GBPO


def test_normalize_then_sum_advantages_by_hand_and_as_trls(tiny_model_dir, tmp_path):
    rewards = torch.tensor([[1.0, 0.2], [0.0, 0.4], [0.0, 0.9], [1.0, 0.1]])  # one group of 4, two functions
    summed = normalize_then_sum_rewards(rewards, torch.tensor([1.0, 0.5]), 4)
    z1 = [(r - 0.5) / (statistics.stdev([1, 0, 0, 1]) + 1e-4) for r in (1, 0, 0, 1)]
    c2 = [0.2, 0.4, 0.9, 0.1]
    z2 = [(r - statistics.fmean(c2)) / (statistics.stdev(c2) + 1e-4) for r in c2]
    assert summed.tolist() == pytest.approx([a + 0.5 * b for a, b in zip(z1, z2, strict=True)], rel=1e-5)

    seen = {}
    for name, cls, config_cls in (("trl", GRPOTrainer, GRPOConfig), ("gbpo", GBPOTrainer, GBPOConfig)):
        model, tokenizer = load(tiny_model_dir)
        args = config_cls(output_dir=str(tmp_path / name), multi_objective_aggregation="normalize_then_sum",
                          reward_weights=[1.0, 0.5], **RUN)  # fmt: skip
        trainer = cls(model=model, reward_funcs=[digit_reward, char_code_reward], args=args,
                      train_dataset=prompts_dataset(), processing_class=tokenizer)  # fmt: skip
        trainer.model.train()
        torch.manual_seed(11)
        batch = [{"prompt": [{"role": "user", "content": "Count to 3"}]}] * 4
        seen[name] = trainer._generate_and_score_completions(batch)
    torch.testing.assert_close(seen["gbpo"]["completion_ids"], seen["trl"]["completion_ids"], rtol=0, atol=0)
    torch.testing.assert_close(seen["gbpo"]["advantages"], seen["trl"]["advantages"], rtol=1e-5, atol=1e-6)
    # GBPO's targets act on the same sum: above its median 1.3, below 0.7 (4 distinct values: none at the median)
    a = seen["gbpo"]["advantages"]
    assert len(set(a.tolist())) == 4
    middle = a.sort().values[1:3].mean()  # the median of 4 values (torch.quantile at 0.5): between the middle two
    torch.testing.assert_close(seen["gbpo"]["target_ratios"], torch.where(a > middle, 1.3, 0.7), rtol=0, atol=1e-5)


def test_normalize_then_sum_gbpo_trains(tiny_model_dir, tmp_path):
    trainer = run(GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path, reward=[digit_reward, char_code_reward],
                  multi_objective_aggregation="normalize_then_sum", reward_weights=[1.0, 0.5])  # fmt: skip
    logs = [e for e in trainer.state.log_history if "gbpo/target_ratio/mean" in e]
    assert len(logs) == 2 and all(e["policy_loss"] > 0 for e in logs)  # both reward functions' sum carried a loss
    initial, _ = load(tiny_model_dir)
    before, after = params(initial), params(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)


# ---------------------------------------------------------------- 6. bad values fail at construction


@pytest.mark.parametrize(("key", "bad"), [("loss_type", "gbpoo"), ("scale_rewards", "grp"),
                                          ("importance_sampling_level", "tokens"), ("vllm_mode", "colocated"),
                                          ("multi_objective_aggregation", "sum"),
                                          ("vllm_importance_sampling_mode", "token")])  # fmt: skip
def test_every_fixed_set_key_is_checked_at_construction(tmp_path, key, bad):
    with pytest.raises(ValueError, match=f"{key}='{bad}' is not one of the accepted values") as error:
        GBPOConfig(output_dir=str(tmp_path), **{key: bad}, **CPU_RUN)
    assert all(repr(v) in str(error.value) for v in CHOICES[key])
    for good in CHOICES[key]:  # every accepted value constructs (with the keys it needs)
        needs = {"importance_sampling_level": {"loss_type": "gbpo"}}.get(key, {})
        GBPOConfig(output_dir=str(tmp_path), **{**needs, key: good}, **CPU_RUN)


def test_trl_loss_types_are_those_trls_loss_computes():
    """The list GBPOConfig accepts is what the installed TRL's `_compute_loss` dispatches on, no more, no less."""
    source = inspect.getsource(GRPOTrainer._compute_loss)
    named = set(re.findall(r'loss_type == "(\w+)"', source))
    for group in re.findall(r"loss_type in \[([^\]]*)\]", source):
        named |= set(re.findall(r'"(\w+)"', group))
    assert named == set(TRL_LOSS_TYPES)


@pytest.mark.parametrize(
    ("key", "bad", "accepted"),
    [("loss_type", "gbpoo", "'gbpo', 'r2vpo', 'ppo_br', 'grpo'"), ("scale_rewards", "grp", "'group', 'batch', 'none'")],
)
def test_a_misspelt_value_stops_gbpo_train_before_the_model_loads(tmp_path, key, bad, accepted):
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "smollm2_cpu.yaml"
    result = subprocess.run([sys.executable, "-m", "gbpo.train", str(recipe), f"--{key}", bad, "--output_dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2
    assert f"{key}='{bad}' is not one of the accepted values: {accepted}" in result.stderr
    assert "Loading weights" not in result.stderr and not any(tmp_path.iterdir())
