"""The exact target (soft quantile, Theorem 4.1) against the hard median under binary rewards (issue 33, part 3).

With binary (TTRL majority-vote) rewards, a group of 8 in which k completions agree with the majority has two reward
values. The hard median puts the threshold on one of them when k != 4, so that side gets target ratio exactly 1 and no
gradient at ratio 1: the step is one-sided, and the targets do not average 1. The soft quantile splits the tied
completions' targets so that they average exactly 1, on both sides of 1; at ratio 1 its gradient is then GRPO's.
Every expected number here is worked by hand from the definitions (docs/algorithm.md, "Targets").
"""

import statistics

import pytest
import torch
from datasets import Dataset
from tiny import CPU_RUN
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from gbpo import GBPOConfig, GBPOTrainer
from gbpo.loss import gbpo_advantages, gbpo_per_token_loss, target_ratio

G = 8


def binary_group(k: int) -> torch.Tensor:
    """k completions agree with the majority (reward 1), the other 8 - k do not (reward 0)."""
    return torch.tensor([1.0] * k + [0.0] * (G - k))


def targets(rewards: torch.Tensor, baseline: str) -> tuple[torch.Tensor, torch.Tensor]:
    advantages, target_advantages = gbpo_advantages(rewards, G, target_baseline=baseline)
    return advantages, target_ratio(target_advantages, 0.3, 0.3, 1e-4)


def z_scores_by_hand(k: int) -> tuple[float, float]:
    """TRL's advantages (R - mean) / (std + 1e-4) of the agreeing and the other completions, in Python floats."""
    rewards = [1.0] * k + [0.0] * (G - k)
    mean, std = statistics.fmean(rewards), statistics.stdev(rewards)
    return (1 - mean) / (std + 1e-4), (0 - mean) / (std + 1e-4)


@pytest.mark.parametrize("k", range(1, G))
def test_soft_quantile_targets_average_one_and_are_two_sided(k):
    _, r = targets(binary_group(k), "soft_quantile")
    assert r.double().mean().item() == pytest.approx(1.0, abs=1e-6)
    assert r[:k].min() > 1.0 > r[k:].max()  # agreeing completions pushed up, the others down: two-sided
    # By hand (p = 1/2 of the group above the threshold): when k > 4 the others sit far below it (target 0.7) and the
    # k agreeing ones share 4 "above" units: sigmoid = 4 / k each; when k < 4, the agreeing ones are far above it
    # (1.3) and the 8 - k others share 4 - k units; at k = 4 the threshold falls between the two values.
    if k > 4:
        expected = (1 - 0.3 + 0.6 * 4 / k, 0.7)
    elif k < 4:
        expected = (1.3, 1 - 0.3 + 0.6 * (4 - k) / (G - k))
    else:
        expected = (1.3, 0.7)
    torch.testing.assert_close(r[:k], torch.full((k,), expected[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(r[k:], torch.full((G - k,), expected[1]), atol=1e-5, rtol=0)


def test_five_of_eight_by_hand():
    _, soft = targets(binary_group(5), "soft_quantile")
    _, hard = targets(binary_group(5), "median")
    assert soft[:5].tolist() == pytest.approx([1.18] * 5, abs=1e-5) and soft[5:].tolist() == pytest.approx([0.7] * 3)
    # the hard median is the majority's reward: the majority's target is 1, only the minority is pushed (down)
    assert hard[:5].tolist() == pytest.approx([1.0] * 5, abs=1e-6) and hard[5:].tolist() == pytest.approx([0.7] * 3)
    assert hard.double().mean().item() == pytest.approx(0.8875, abs=1e-6)  # (5 x 1.0 + 3 x 0.7) / 8


@pytest.mark.parametrize("k", [k for k in range(1, G) if k != 4])
def test_hard_median_targets_do_not_average_one_and_are_one_sided(k):
    _, r = targets(binary_group(k), "median")
    at_one = (r - 1).abs() < 1e-6
    # the median is the reward of the larger side: that side's target is exactly 1
    assert at_one.sum().item() == max(k, G - k)
    # the smaller side gets the bound: 1.3 when it is the agreeing side (k < 4), 0.7 otherwise
    expected = (max(k, G - k) * 1.0 + min(k, G - k) * (1.3 if k < 4 else 0.7)) / G
    assert r.double().mean().item() == pytest.approx(expected, abs=1e-6)
    assert abs(expected - 1.0) > 0.037  # 1 of 8 pushed: 1.0375 or 0.9625; 5 of 8 agreeing: 0.8875


def ratio_one_gradient(k: int, baseline: str) -> torch.Tensor:
    """d loss / d logp of each completion's one token at logp = logp_old (ratio 1), GBPO's loss summed over tokens."""
    advantages, r = targets(binary_group(k), baseline)
    old = torch.full((G, 1), -2.0)
    logps = old.clone().requires_grad_(True)
    gbpo_per_token_loss(logps, old, advantages, r).sum().backward()
    return logps.grad[:, 0]


@pytest.mark.parametrize("k", range(1, G))
def test_at_ratio_one_soft_quantile_gradient_is_grpos(k):
    # GRPO's (dapo's) per-token loss -min(rho A, clip(rho) A) has gradient -A rho = -A at ratio 1 (inside the clip),
    # with A TRL's z-score: by hand from the group's rewards.
    up, down = z_scores_by_hand(k)
    grpo = torch.tensor([-up] * k + [-down] * (G - k))
    torch.testing.assert_close(ratio_one_gradient(k, "soft_quantile"), grpo, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", range(1, G))
def test_at_ratio_one_hard_median_gradient_is_one_sided(k):
    grad = ratio_one_gradient(k, "median")
    up, down = z_scores_by_hand(k)
    if k >= 5:  # the majority (reward 1) is the median: no gradient; the minority is pushed down as GRPO does
        assert grad[:k].abs().max() == 0 and grad[k:].tolist() == pytest.approx([-down] * (G - k), rel=1e-5)
    elif k <= 3:  # the non-agreeing side is the median: no gradient; the agreeing side is pushed up
        assert grad[k:].abs().max() == 0 and grad[:k].tolist() == pytest.approx([-up] * k, rel=1e-5)
    else:  # 4 of 8: the median falls between the two values, both sides move
        assert grad[:k].tolist() == pytest.approx([-up] * k, rel=1e-5)
        assert grad[k:].tolist() == pytest.approx([-down] * (G - k), rel=1e-5)


# ---------------------------------------------------------------- side by side with TRL's GRPOTrainer at one epoch


def parity_reward(completions, **kwargs):
    """A binary reward with ties in every group: whether the completion has an even number of characters."""
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]


def one_step(cls, config_cls, tiny_model_dir, tmp_path, **overrides):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Count to {i}"}]} for i in range(8)])
    args = config_cls(
        output_dir=str(tmp_path),
        per_device_train_batch_size=32,
        num_generations=G,
        max_completion_length=8,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",  # Adam's first step is lr * sign(grad): rounding-level gradients would move weights a full step
        epsilon=0.3,
        temperature=1.0,
        **{**CPU_RUN, "seed": 3},
        **overrides,
    )
    trainer = cls(model=model, reward_funcs=parity_reward, args=args, train_dataset=prompts, processing_class=tokenizer)
    rewards = []
    score = trainer._calculate_rewards

    def record(*a, **kw):
        out = score(*a, **kw)
        rewards.append(out[:, 0].clone())
        return out

    trainer._calculate_rewards = record
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return before, after, rewards[0].view(-1, G), trainer.state.log_history


def test_soft_quantile_gbpo_at_one_epoch_trains_as_grpo_trainer_and_the_hard_median_does_not(tiny_model_dir, tmp_path):
    before, grpo, rewards, _ = one_step(GRPOTrainer, GRPOConfig, tiny_model_dir, tmp_path / "grpo", loss_type="dapo")
    _, soft, soft_rewards, logs = one_step(
        GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path / "soft", target_baseline="soft_quantile"
    )
    _, hard, _, hard_logs = one_step(GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path / "hard")
    torch.testing.assert_close(soft_rewards, rewards, rtol=0, atol=0)  # same completions, same rewards
    agreeing = rewards.sum(dim=1)
    assert ((agreeing != 0) & (agreeing != G) & (agreeing != G // 2)).any()  # a group where the median is one-sided
    moved = max((grpo[n] - before[n]).abs().max().item() for n in before)
    assert moved > 1e-3  # the step is not trivially zero
    for name in before:  # the same update as TRL's GRPO, to float rounding
        torch.testing.assert_close(soft[name], grpo[name], rtol=1e-5, atol=1e-6, msg=name)
    differs = max((hard[n] - grpo[n]).abs().max().item() for n in before)
    assert differs > 0.05 * moved  # the hard median's one-sided step is another update
    # the logged target sides: the soft quantile has no target at 1 in a group with a gradient; the hard median has
    steps = [e for e in logs if "gbpo/target_ratio/at_1" in e]
    informative = ((agreeing != 0) & (agreeing != G)).sum().item() / len(agreeing)
    assert steps[0]["gbpo/target_ratio/at_1"] == pytest.approx(1 - informative)  # only the all-equal groups
    hard_step = next(e for e in hard_logs if "gbpo/target_ratio/at_1" in e)
    assert hard_step["gbpo/target_ratio/at_1"] > steps[0]["gbpo/target_ratio/at_1"]
