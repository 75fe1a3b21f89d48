"""The GBPO maths against hand-worked numbers (paper 4.1, 4.5, 4.6; docs/algorithm.md)."""

import math

import pytest
import torch

from gbpo.loss import gbpo_advantages, gbpo_per_token_loss, importance_ratio, target_ratio

D = 1e-4  # std_eps added to the std (TRL's constant)


def adv(rewards, g, **kw):
    return gbpo_advantages(torch.tensor(rewards, dtype=torch.float32), g, **kw)


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=tol)


# ---------------------------------------------------------------- advantages, hand-worked groups of 4 (and 3, 5)


def test_continuous_group_of_four():
    # R = [1, 2, 4, 7]: mean 3.5, deviations [-2.5, -1.5, 0.5, 3.5], sum of squares 21, Bessel variance 7,
    # median (2 + 4) / 2 = 3.
    a, t = adv([1.0, 2.0, 4.0, 7.0], 4)
    s = math.sqrt(7) + D
    close(a, [-2.5 / s, -1.5 / s, 0.5 / s, 3.5 / s])
    close(t, [-2 / s, -1 / s, 1 / s, 4 / s])
    close(target_ratio(t), [0.7, 0.7, 1.3, 1.3])


def test_binary_group_majority_right_sits_at_the_median():
    # R = [1, 1, 1, 0]: mean 0.75, Bessel std 0.5, median 1 -> the right answers get r* = 1, the wrong one 0.7.
    a, t = adv([1.0, 1.0, 1.0, 0.0], 4)
    s = 0.5 + D
    close(a, [0.25 / s, 0.25 / s, 0.25 / s, -0.75 / s])
    close(t, [0.0, 0.0, 0.0, -1 / s])
    r = target_ratio(t)
    close(r, [1.0, 1.0, 1.0, 0.7])
    # Remark 4.3: with binary rewards the median does not normalise the target.
    assert r.mean().item() == pytest.approx(0.925, abs=1e-6)


def test_binary_group_minority_right():
    # R = [1, 0, 0, 0]: median 0, so the wrong answers sit at the median (r* = 1), the right one is pushed up.
    a, t = adv([1.0, 0.0, 0.0, 0.0], 4)
    close(target_ratio(t), [1.3, 1.0, 1.0, 1.0])
    close(a, [0.75 / (0.5 + D), -0.25 / (0.5 + D), -0.25 / (0.5 + D), -0.25 / (0.5 + D)])


def test_binary_group_split_in_half_normalises():
    # R = [1, 1, 0, 0]: median 0.5, std sqrt(1/3).
    a, t = adv([1.0, 1.0, 0.0, 0.0], 4)
    s = math.sqrt(1 / 3) + D
    close(t, [0.5 / s, 0.5 / s, -0.5 / s, -0.5 / s])
    r = target_ratio(t)
    close(r, [1.3, 1.3, 0.7, 0.7])
    assert r.mean().item() == pytest.approx(1.0, abs=1e-6)


def test_odd_group_middle_element_gets_ratio_one():
    # R = [0, 1, 5]: mean 2, Bessel variance (4 + 1 + 9) / 2 = 7, median 1.
    a, t = adv([0.0, 1.0, 5.0], 3)
    s = math.sqrt(7) + D
    close(a, [-2 / s, -1 / s, 3 / s])
    close(t, [-1 / s, 0.0, 4 / s])
    close(target_ratio(t), [0.7, 1.0, 1.3])


def test_ties_at_the_median():
    # R = [0, 1, 1, 1, 2]: three rewards tie the median 1 and get r* = 1; the group still averages 1.
    _, t = adv([0.0, 1.0, 1.0, 1.0, 2.0], 5)
    close(target_ratio(t), [0.7, 1.0, 1.0, 1.0, 1.3])


def test_all_equal_group_has_zero_advantage_and_zero_loss():
    a, t = adv([0.5, 0.5, 0.5, 0.5, 1.0, 0.0, 0.0, 0.0], 4)
    close(a[:4], [0.0] * 4)
    close(t[:4], [0.0] * 4)
    close(target_ratio(t[:4]), [1.0] * 4)
    logps = torch.randn(8, 3, requires_grad=True)
    old = logps.detach() + 0.1 * torch.randn(8, 3)
    loss = gbpo_per_token_loss(logps, old, a, target_ratio(t))
    assert torch.all(loss[:4] == 0)
    assert torch.all(loss[4:] > 0)


def test_groups_are_independent_and_consecutive():
    a1, t1 = adv([1.0, 2.0, 4.0, 7.0], 4)
    a2, t2 = adv([1.0, 0.0, 0.0, 0.0], 4)
    a, t = adv([1.0, 2.0, 4.0, 7.0, 1.0, 0.0, 0.0, 0.0], 4)
    close(a, torch.cat([a1, a2]).tolist())
    close(t, torch.cat([t1, t2]).tolist())


def test_scale_rewards_none_and_batch():
    a, t = adv([1.0, 2.0, 4.0, 7.0], 4, scale_rewards="none")
    close(a, [-2.5, -1.5, 0.5, 3.5])
    close(t, [-2.0, -1.0, 1.0, 3.0 + 1.0])
    # batch: the std of all 8 rewards, the mean and median of each group
    rewards = [1.0, 2.0, 4.0, 7.0, 0.0, 0.0, 1.0, 1.0]
    a, t = adv(rewards, 4, scale_rewards="batch")
    s = torch.tensor(rewards).std().item() + D
    close(a, [-2.5 / s, -1.5 / s, 0.5 / s, 3.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0.5 / s])
    close(t, [-2 / s, -1 / s, 1 / s, 4 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0.5 / s])


def test_weight_advantages_match_trl_grpo_formula():
    # TRL: (R - mean) / (nanstd + 1e-4) per group.
    torch.manual_seed(0)
    rewards = torch.rand(6 * 8)
    grouped = rewards.view(-1, 8)
    expected = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    a, _ = gbpo_advantages(rewards, 8)
    torch.testing.assert_close(a, expected)


def test_nan_rewards_are_left_out_and_get_zero_advantage():
    # The group of four above with a NaN among them: the statistics of [1, 2, 4, 7], and 0 for the NaN.
    a, t = adv([1.0, 2.0, float("nan"), 4.0, 7.0], 5)
    s = math.sqrt(7) + D
    close(a, [-2.5 / s, -1.5 / s, 0.0, 0.5 / s, 3.5 / s])
    close(t, [-2 / s, -1 / s, 0.0, 1 / s, 4 / s])


def test_std_eps_is_added_to_the_std():
    a, t = adv([1.0, 2.0, 4.0, 7.0], 4, std_eps=0.0)
    close(a, [-2.5 / math.sqrt(7), -1.5 / math.sqrt(7), 0.5 / math.sqrt(7), 3.5 / math.sqrt(7)])
    a, _ = adv([1.0, 2.0, 4.0, 7.0], 4, std_eps=1.0)
    close(a, [-2.5 / (math.sqrt(7) + 1), -1.5 / (math.sqrt(7) + 1), 0.5 / (math.sqrt(7) + 1), 3.5 / (math.sqrt(7) + 1)])


def test_mean_baseline_is_the_ablation():
    a, t = adv([1.0, 2.0, 4.0, 7.0], 4, target_baseline="mean")
    close(t, a.tolist())


# ---------------------------------------------------------------- normalisation of each baseline


def group_means(t, g, **kw):
    return target_ratio(t, **kw).view(-1, g).mean(1)


@pytest.mark.parametrize("g", [2, 3, 4, 5, 8, 16, 32, 64])
@pytest.mark.parametrize("eps", [(0.3, 0.3), (0.2, 0.28), (1.0, 0.3)])
def test_soft_quantile_normalises_every_unequal_group(g, eps):
    lo, hi = eps
    gen = torch.Generator().manual_seed(g)
    continuous = torch.rand(20 * g, generator=gen)
    binary = (torch.rand(20 * g, generator=gen) < 0.5).float()
    ties = torch.randint(0, 3, (20 * g,), generator=gen).float()
    kw = dict(epsilon_low=lo, epsilon_high=hi, temperature=1e-4)
    for rewards in (continuous, binary, ties):
        _, t = gbpo_advantages(rewards, g, target_baseline="soft_quantile", **kw)
        unequal = rewards.view(-1, g).std(1) > 0
        assert unequal.any()
        means = group_means(t, g, **kw)[unequal]
        torch.testing.assert_close(means, torch.ones_like(means), atol=1e-4, rtol=0)


def test_soft_quantile_binary_hand_worked():
    # R = [1, 1, 1, 0], tau = 1e-4: the three right answers share the threshold's neighbourhood; sigmoid must be 2/3 on
    # them so that (3 * 2/3 + 0) / 4 = 1/2, i.e. r* = 0.7 + 0.6 * 2/3 = 1.1 for each, and 0.7 for the wrong one.
    _, t = adv([1.0, 1.0, 1.0, 0.0], 4, target_baseline="soft_quantile")
    close(target_ratio(t), [1.1, 1.1, 1.1, 0.7], tol=1e-4)
    assert t[0].item() == pytest.approx(1e-4 * math.log(2), rel=1e-3)


def test_median_normalises_without_ties_and_not_with_binary():
    gen = torch.Generator().manual_seed(1)
    for g in (4, 7, 8, 32):
        rewards = torch.rand(10 * g, generator=gen)  # continuous: no reward ties the median except the middle one
        _, t = gbpo_advantages(rewards, g)
        torch.testing.assert_close(group_means(t, g), torch.ones(10), atol=1e-6, rtol=0)
    _, t = adv([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0], 4)
    close(group_means(t, 4), [0.925, 1.075])


def test_quantile_matches_asymmetric_bounds():
    # eps_low 0.2, eps_high 0.3: p = 0.4 of a group of 10 lies above the 0.6-quantile -> 4 * 1.3 + 6 * 0.8 = 10.
    gen = torch.Generator().manual_seed(2)
    rewards = torch.rand(5 * 10, generator=gen)
    kw = dict(epsilon_low=0.2, epsilon_high=0.3)
    _, t = gbpo_advantages(rewards, 10, target_baseline="quantile", **kw)
    r = target_ratio(t, **kw).view(-1, 10)
    assert torch.all((r > 1.0).sum(1) == 4)
    torch.testing.assert_close(r.mean(1), torch.ones(5), atol=1e-4, rtol=0)  # tau = 1e-4: near-ties blur a little
    # the median would not normalise these bounds
    _, t_median = gbpo_advantages(rewards, 10, target_baseline="median", **kw)
    assert not torch.allclose(target_ratio(t_median, **kw).view(-1, 10).mean(1), torch.ones(5), atol=1e-3)
    # and binary rewards break the quantile too (Remark 4.3)
    _, t = adv([1.0, 1.0, 1.0, 0.0, 0.0], 5, target_baseline="quantile", **kw)
    assert abs(target_ratio(t, **kw).mean().item() - 1.0) > 1e-3


def test_quantile_equals_median_for_symmetric_bounds():
    rewards = torch.rand(40, generator=torch.Generator().manual_seed(3))
    _, t_q = gbpo_advantages(rewards, 8, target_baseline="quantile")
    _, t_m = gbpo_advantages(rewards, 8, target_baseline="median")
    torch.testing.assert_close(t_q, t_m)


def test_cem_limit_zero_target_below_threshold():
    # eps_low = 1: r* = 0 below the threshold, only the top p = 1 / (1 + eps_high) is kept (paper 4.6).
    _, t = adv([1.0, 2.0, 4.0, 7.0], 4, epsilon_low=1.0)
    close(target_ratio(t, epsilon_low=1.0), [0.0, 0.0, 1.3, 1.3])


def test_target_ratio_formula_at_finite_temperature():
    t = torch.tensor([-1e-4, 0.0, 2e-4])
    expected = [0.7 + 0.6 * torch.sigmoid(torch.tensor(x)).item() for x in (-1.0, 0.0, 2.0)]
    close(target_ratio(t), expected)
    close(target_ratio(torch.tensor([0.0]), epsilon_low=0.2, epsilon_high=0.28), [0.8 + 0.48 / 2])


# ---------------------------------------------------------------- the per-token loss and its gradient


def test_per_token_loss_hand_worked():
    a = torch.tensor([2.0, -1.0])
    r_star = torch.tensor([1.3, 0.7])
    old = torch.zeros(2, 3)
    logps = torch.log(torch.tensor([[1.0, 1.5, 1.3], [1.0, 0.5, 0.7]]))
    loss = gbpo_per_token_loss(logps, old, a, r_star)
    close(loss, [[2 * 0.3, 2 * 0.2, 0.0], [0.3, 0.2, 0.0]])
    # the TV regulariser adds c_tv * |rho - r*| unweighted
    loss = gbpo_per_token_loss(logps, old, a, r_star, tv_coef=0.5)
    close(loss, [[2.5 * 0.3, 2.5 * 0.2, 0.0], [1.5 * 0.3, 1.5 * 0.2, 0.0]])


def grad_of(rho, advantage, r_star):
    logps = torch.log(torch.tensor([[rho]])).requires_grad_()
    gbpo_per_token_loss(logps, torch.zeros(1, 1), torch.tensor([advantage]), torch.tensor([r_star])).sum().backward()
    return logps.grad.item()


def test_gradient_signs_and_sizes():
    # d/dlogp |A| |rho - r*| = |A| * sign(rho - r*) * rho; gradient descent moves logp against it.
    # Above the median: pushed up towards 1 + eps_high ...
    assert grad_of(1.0, 2.0, 1.3) == pytest.approx(-2.0)
    # ... and past the target the push reverses (PPO's clipped loss has zero gradient there).
    assert grad_of(1.5, 2.0, 1.3) == pytest.approx(2.0 * 1.5)
    # Below the median: pushed down towards 1 - eps_low, and back up once below it.
    assert grad_of(1.0, -1.0, 0.7) == pytest.approx(1.0)
    assert grad_of(0.5, -1.0, 0.7) == pytest.approx(-0.5)
    # A completion at the median (r* = 1, binary majority) is still held at rho = 1 from both sides.
    assert grad_of(1.2, 0.5, 1.0) == pytest.approx(0.5 * 1.2)
    assert grad_of(0.8, 0.5, 1.0) == pytest.approx(-0.5 * 0.8)


def test_gradient_flows_only_through_current_logps():
    logps = torch.zeros(2, 2, requires_grad=True)
    old = torch.full((2, 2), -0.1, requires_grad=True)
    a = torch.tensor([1.0, -1.0], requires_grad=True)
    r = torch.tensor([1.3, 0.7], requires_grad=True)
    gbpo_per_token_loss(logps, old, a, r).sum().backward()
    assert logps.grad is not None and torch.all(logps.grad != 0)
    assert old.grad is None and a.grad is None and r.grad is None


def test_ratio_is_clamped_like_the_reference():
    rho = importance_ratio(torch.tensor([[50.0, -50.0, 0.5]]), torch.zeros(1, 3))
    close(rho, [[math.exp(20), math.exp(-20), math.exp(0.5)]], tol=1e-4)


def test_full_step_moves_ratios_towards_targets():
    # A few gradient steps on free logits: each ratio approaches its target, both from below and from above.
    torch.manual_seed(0)
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0])
    a, t = gbpo_advantages(rewards, 4)
    r_star = target_ratio(t)
    old = torch.log(torch.full((4, 1), 0.25))
    logps = (old + torch.tensor([[0.5], [-0.5], [-0.5], [0.5]])).requires_grad_()
    before = (importance_ratio(logps, old).squeeze(1) - r_star).abs()
    opt = torch.optim.SGD([logps], lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        gbpo_per_token_loss(logps, old, a, r_star).mean().backward()
        opt.step()
    after = (importance_ratio(logps, old).squeeze(1) - r_star).abs()
    assert torch.all(after < before)


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(epsilon_low=0.0), "epsilon_low"),
        (dict(epsilon_low=1.5), "epsilon_low"),
        (dict(epsilon_high=0.0), "epsilon_high"),
        (dict(target_baseline="mode"), "target_baseline.*median"),
        (dict(scale_rewards="std"), "scale_rewards.*group"),
        (dict(std_eps=-1e-4), "std_eps"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gbpo_advantages(torch.zeros(4), 4, **kwargs)


def test_batch_not_a_multiple_of_group():
    with pytest.raises(ValueError, match="multiple of num_generations"):
        gbpo_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="temperature"):
        target_ratio(torch.zeros(2), temperature=0.0)
    with pytest.raises(ValueError, match="tv_coef"):
        gbpo_per_token_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1), tv_coef=-1.0)
    with pytest.raises(ValueError, match="advantages"):
        gbpo_per_token_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3), torch.ones(2))
