"""R2VPO and PPO-BR: the loss functions and state updates against hand-worked values, and end-to-end runs of
`gbpo.train` whose state is logged every step and survives a resume."""

import json
import math

import pytest
import torch
from test_checkpoints import run_preempted, steps
from test_train import tiny_recipe

from gbpo import GBPOConfig
from gbpo.loss import (
    ppo_br_epsilon,
    ppo_clip_per_token_loss,
    r2vpo_dual_update,
    r2vpo_per_token_loss,
    reward_trend,
)
from gbpo.trust_region import TRUST_REGION_FILE, TrustRegionState


def logps_with_ratio(*ratios):
    """(1, T) current log-probs (with gradient) and zero old log-probs, so that rho = the given ratios."""
    logps = torch.tensor([[math.log(r) for r in ratios]], requires_grad=True)
    return logps, torch.zeros_like(logps)


# ---------------------------------------------------------------------------------------------------- R2VPO


def test_r2vpo_loss_and_gradient_by_hand():
    logps, old = logps_with_ratio(1.2, 0.9)
    loss = r2vpo_per_token_loss(logps, old, torch.tensor([1.0]), lagrange_multiplier=2.0)
    # token 1: -1.2 + 2 * 0.2^2 = -1.12; token 2: -0.9 + 2 * 0.1^2 = -0.88
    torch.testing.assert_close(loss, torch.tensor([[-1.12, -0.88]]))
    loss.sum().backward()
    # d/dlogp = rho * (-A + 2 lambda (rho - 1)): 1.2 * (-1 + 0.8) = -0.24 (still pushed up, less than -rho * A alone),
    # 0.9 * (-1 - 0.4) = -1.26 (below 1 the penalty adds to the push up)
    torch.testing.assert_close(logps.grad, torch.tensor([[-0.24, -1.26]]))


def test_r2vpo_penalty_pulls_an_overshooting_ratio_back():
    logps, old = logps_with_ratio(1.2)
    r2vpo_per_token_loss(logps, old, torch.tensor([1.0]), lagrange_multiplier=5.0).sum().backward()
    assert logps.grad.item() == pytest.approx(1.2 * (-1 + 2 * 5 * 0.2))  # +1.2: gradient descent lowers rho
    logps, old = logps_with_ratio(1.2)
    r2vpo_per_token_loss(logps, old, torch.tensor([1.0]), lagrange_multiplier=0.0).sum().backward()
    assert logps.grad.item() == pytest.approx(-1.2)  # lambda 0: the unconstrained surrogate -rho * A


@pytest.mark.parametrize(
    ("lam", "v", "delta", "eta", "expected"),
    [
        (1.0, 0.05, 0.01, 10.0, 1.4),  # over the target: lambda grows by eta * 0.04
        (1.0, 0.0, 0.01, 10.0, 0.9),  # under it: shrinks by eta * 0.01
        (0.05, 0.0, 0.01, 10.0, 0.0),  # never below 0
        (2.0, 0.5, 0.01, 0.0, 2.0),  # eta 0: fixed penalty
    ],
)
def test_r2vpo_dual_update_by_hand(lam, v, delta, eta, expected):
    assert r2vpo_dual_update(lam, v, delta, eta) == pytest.approx(expected)


def test_r2vpo_rejects_bad_values():
    logps, old = logps_with_ratio(1.0)
    with pytest.raises(ValueError, match="lambda"):
        r2vpo_per_token_loss(logps, old, torch.tensor([1.0]), -1.0)
    with pytest.raises(ValueError, match="delta > 0"):
        r2vpo_dual_update(1.0, 0.1, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------- PPO-BR


def test_ppo_clip_loss_and_gradient_by_hand():
    logps, old = logps_with_ratio(1.5, 0.5, 1.1)
    loss = ppo_clip_per_token_loss(logps, old, torch.tensor([1.0]), 0.2, 0.2)
    # A > 0: rho 1.5 is clipped to 1.2 (no gradient); rho 0.5 keeps -0.5; rho 1.1 inside the range
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.5, -1.1]]))
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[0.0, -0.5, -1.1]]))
    logps, old = logps_with_ratio(1.5, 0.5)
    loss = ppo_clip_per_token_loss(logps, old, torch.tensor([-1.0]), 0.2, 0.2)
    # A < 0: rho 1.5 keeps 1.5 (pushed down, gradient +1.5); rho 0.5 is clipped at 0.8 (no gradient)
    torch.testing.assert_close(loss, torch.tensor([[1.5, 0.8]]))
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[1.5, 0.0]]))


def test_reward_trend_by_hand():
    assert reward_trend([1.0, 1.0, 2.0], window=2) == 0.0  # fewer than two windows
    assert reward_trend([1.0, 1.0, 2.0, 2.0], window=2) == pytest.approx(1.0)  # (2 - 1) / 1
    assert reward_trend([9.0, 0.5, 0.5, 0.25, 0.25], window=2) == pytest.approx(-0.5)  # only the last 2 windows
    with pytest.raises(ValueError, match="window"):
        reward_trend([1.0], 0)


def test_ppo_br_epsilon_by_hand():
    eps, phi, psi = ppo_br_epsilon(0.2, entropy=1.0, entropy_ref=2.0, reward_change=0.5)
    assert (phi, psi) == (0.5, 0.5)
    assert eps == pytest.approx(0.2 * (1 + 0.5 * math.tanh(0.5) - 0.3 * math.tanh(0.5)))  # 0.21849
    # entropy above the reference and a falling reward: phi 1, psi 0 -> the widest unclamped range
    eps, phi, psi = ppo_br_epsilon(0.2, entropy=3.0, entropy_ref=1.0, reward_change=-1.0)
    assert (phi, psi) == (1.0, 0.0) and eps == pytest.approx(0.2 * (1 + 0.5 * math.tanh(1.0)))
    # rising reward, collapsed entropy: narrower than eps_0
    assert ppo_br_epsilon(0.2, 0.0, 1.0, 5.0)[0] == pytest.approx(0.2 * (1 - 0.3 * math.tanh(1.0)))
    assert ppo_br_epsilon(0.35, 1.0, 1.0, 0.0)[0] == 0.4  # clamped to epsilon_max
    assert ppo_br_epsilon(0.1, 0.0, 1.0, 1.0)[0] == 0.1  # clamped to epsilon_min
    with pytest.raises(ValueError, match="epsilon_min"):
        ppo_br_epsilon(0.2, 1.0, 1.0, 0.0, epsilon_min=0.5, epsilon_max=0.4)


# ---------------------------------------------------------------------------------------------------- state


def config(**keys):
    return GBPOConfig(output_dir="/tmp/unused", use_cpu=True, bf16=False, report_to="none", **keys)


def test_state_updates_by_hand(tmp_path):
    args = config(loss_type="r2vpo", r2vpo_lambda_init=1.0, r2vpo_delta=0.01, r2vpo_eta=10.0)
    state = TrustRegionState.from_config(args)
    state.accumulate(variance_sum=0.3, entropy_sum=5.0, tokens=4)  # two micro-batches of one step
    state.accumulate(variance_sum=0.1, entropy_sum=5.0, tokens=6)
    state.add_batch_reward(0.5)  # R2VPO keeps no reward window
    state.end_step(args)
    assert state.rewards == []
    assert state.ratio_variance == pytest.approx(0.04)  # 0.4 / 10 tokens
    assert state.lagrange_multiplier == pytest.approx(1.3)  # 1 + 10 * (0.04 - 0.01)
    assert state.metrics() == {"r2vpo/lambda": pytest.approx(1.3), "r2vpo/ratio_variance": pytest.approx(0.04)}

    args = config(loss_type="ppo_br", ppo_br_reward_window=1)
    assert args.epsilon == 0.2  # eps_0 is TRL's default epsilon
    state = TrustRegionState.from_config(args)
    assert state.epsilon == pytest.approx(0.2 * (1 + 0.5 * math.tanh(1.0)))  # step 1: H = H_ref, no trend
    state.add_batch_reward(0.4)  # the first generation batch
    state.accumulate(variance_sum=0.0, entropy_sum=8.0, tokens=4)
    state.end_step(args)  # H_ref = 2, one reward: no trend yet
    assert (state.entropy_ref, state.rewards, state.phi, state.psi) == (2.0, [0.4], 1.0, 0.0)
    state.accumulate(variance_sum=0.0, entropy_sum=6.0, tokens=4)
    state.end_step(args)  # a second optimizer step on the same batch: H 1.5 -> phi 0.75; the window is unchanged
    assert (state.rewards, state.phi, state.psi) == ([0.4], 0.75, 0.0)
    state.add_batch_reward(0.6)  # the second batch
    state.add_batch_reward(math.nan)  # a batch no reward function scored is not entered
    state.accumulate(variance_sum=0.0, entropy_sum=4.0, tokens=4)
    state.end_step(args)  # H 1 -> phi 0.5; dR = (0.6 - 0.4) / 0.4 = 0.5
    assert (state.phi, state.psi) == (0.5, pytest.approx(0.5))
    assert state.epsilon == pytest.approx(0.2 * (1 + 0.5 * math.tanh(0.5) - 0.3 * math.tanh(0.5)))
    state.end_step(args)  # a step without loss tokens leaves the state as it was
    assert state.rewards == [0.4, 0.6] and state.phi == 0.5

    state.save(tmp_path)
    restored = TrustRegionState.from_config(args)
    assert restored.load(tmp_path) and repr(restored) == repr(state)  # repr: nan == nan
    with pytest.raises(ValueError, match="loss_type='r2vpo'"):
        TrustRegionState(loss_type="r2vpo").load(tmp_path)


@pytest.mark.parametrize(
    ("key", "value"),
    [("r2vpo_delta", 0.0), ("r2vpo_eta", -1.0), ("ppo_br_epsilon_min", 0.5), ("ppo_br_reward_window", 0)],
)
def test_config_rejects_bad_keys_by_name(key, value):
    with pytest.raises(ValueError, match=key):
        config(loss_type="r2vpo", **{key: value})


# ---------------------------------------------------------------------------------------------------- end to end

SETTINGS = dict(max_steps=6, num_iterations=2, steps_per_generation=2, dataset_limit=8, learning_rate=0.05)


@pytest.mark.parametrize(
    ("loss_type", "state_keys"),
    [("r2vpo", ("r2vpo/lambda", "r2vpo/ratio_variance")), ("ppo_br", ("ppo_br/epsilon", "ppo_br/phi", "ppo_br/psi"))],
)
def test_train_command_trains_and_logs_the_state_every_step(tmp_path, tiny_model_dir, loss_type, state_keys):
    from gbpo.train import main

    keys = {"r2vpo_eta": 50.0} if loss_type == "r2vpo" else {"ppo_br_reward_window": 1}
    trainer = main([str(tiny_recipe(tmp_path, tiny_model_dir, loss_type=loss_type, **SETTINGS, **keys))])
    logged = [m for m in trainer.state.log_history if "loss" in m]
    assert len(logged) == 6
    for m in logged:
        assert all(key in m for key in (*state_keys, "gbpo/ratio/max", "gbpo/outside_bounds/region_mean", "entropy")), m
    initial = type(trainer.model).from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(p, initial[n]) for n, p in trainer.model.state_dict().items())
    values = [m[state_keys[0]] for m in logged]
    assert len(set(values)) > 1, values  # the state moves from step to step
    if loss_type == "r2vpo":
        # step 1 used lambda_init; step 2 the dual update with step 1's measured variance (logged beside it)
        assert values[0] == 1.0
        assert values[1] == pytest.approx(max(0.0, 1.0 + 50.0 * (logged[1]["r2vpo/ratio_variance"] - 0.01)))
    else:
        assert values[0] == pytest.approx(0.2 * (1 + 0.5 * math.tanh(1.0)))
        assert all(0.1 <= v <= 0.4 for v in values)


@pytest.mark.parametrize("loss_type", ["r2vpo", "ppo_br"])
def test_resume_continues_the_state_exactly(tmp_path, tiny_model_dir, monkeypatch, loss_type):
    """SIGTERM during step 4 saves checkpoint-4; the resumed run logs the same state, losses and weights as an
    uninterrupted one (without the saved state, lambda / eps would restart from their initial values)."""
    from gbpo.train import main

    keys = {"r2vpo_eta": 50.0} if loss_type == "r2vpo" else {"ppo_br_reward_window": 1}
    settings = dict(SETTINGS, max_steps=8, loss_type=loss_type, **keys)
    reference = main([str(tiny_recipe(tmp_path / "reference", tiny_model_dir, save_strategy="no", **settings))])

    recipe = tiny_recipe(tmp_path / "preempted", tiny_model_dir, save_strategy="no", **settings)
    out = tmp_path / "preempted" / "out"
    preempted = run_preempted(recipe, monkeypatch, step=4)
    assert preempted.state.global_step == 4
    saved = json.loads((out / "checkpoint-4" / TRUST_REGION_FILE).read_text())
    assert saved["loss_type"] == loss_type

    resumed = main([str(recipe), "--resume_from_checkpoint", "true"])
    got, want = steps(out), {m["step"]: m for m in reference.state.log_history if "loss" in m}
    state_key = "r2vpo/lambda" if loss_type == "r2vpo" else "ppo_br/epsilon"
    assert len({want[s][state_key] for s in range(5, 9)} | {want[1][state_key]}) > 1  # the state moved
    for step in range(1, 9):
        for key in ("loss", state_key, "gbpo/ratio/max"):
            assert got[step][key] == pytest.approx(want[step][key], rel=1e-5, abs=1e-7), (step, key)
    for name, tensor in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-7, msg=name)


def test_ppo_br_window_counts_generation_batches_and_resumes_inside_a_batch(tmp_path, tiny_model_dir, monkeypatch):
    """A window of 2 generation batches; SIGTERM during step 7, the first of the two optimizer steps on batch 4.

    Each batch's mean reward enters the window once (6 batches over 12 steps: 6 entries, the ``reward`` TRL logs for
    that batch), and the window is saved with the checkpoint, so the resumed run continues it exactly: same eps_t,
    phi, psi, losses and weights as an uninterrupted run.
    """
    from gbpo.train import main

    settings = dict(
        SETTINGS, max_steps=12, num_iterations=1, loss_type="ppo_br", ppo_br_reward_window=2, dataset_limit=12
    )
    reference = main([str(tiny_recipe(tmp_path / "reference", tiny_model_dir, save_strategy="no", **settings))])
    logged_rewards = [m["reward"] for m in reference.state.log_history if "reward" in m]
    assert len(logged_rewards) == 6  # one generation batch every 2 steps
    assert reference.trust_region.rewards == pytest.approx(logged_rewards, abs=1e-6)

    recipe = tiny_recipe(tmp_path / "preempted", tiny_model_dir, save_strategy="no", **settings)
    out = tmp_path / "preempted" / "out"
    assert run_preempted(recipe, monkeypatch, step=7).state.global_step == 7
    saved = json.loads((out / "checkpoint-7" / TRUST_REGION_FILE).read_text())
    assert saved["rewards"] == pytest.approx(logged_rewards[:4], abs=1e-6)  # batch 4 entered when it was generated

    resumed = main([str(recipe), "--resume_from_checkpoint", "true"])
    assert resumed.trust_region.rewards == pytest.approx(reference.trust_region.rewards, abs=1e-6)
    got, want = steps(out), {m["step"]: m for m in reference.state.log_history if "loss" in m}
    for step in range(1, 13):
        for key in ("loss", "ppo_br/epsilon", "ppo_br/phi", "ppo_br/psi", "gbpo/ratio/max"):
            assert got[step][key] == pytest.approx(want[step][key], rel=1e-5, abs=1e-7), (step, key)
    for name, tensor in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-7, msg=name)
