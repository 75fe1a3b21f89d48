"""The GBPO maths as pure torch functions (no trainer state).

Source: "Bounded Ratio Reinforcement Learning" (arXiv 2604.18578), sections 3, 4.1, 4.5, 4.6 and 5.3; the
equations, written out, and the choices of the reference implementation are in ``docs/algorithm.md``.

Layout follows TRL: a batch of ``B = n * G`` completions holds the ``G = num_generations`` completions of
each of ``n`` prompts consecutively, so ``rewards.view(n, G)`` has one prompt per row.

Three functions make the loss:

* :func:`gbpo_advantages` -- the z-score weight advantages ``A`` (as GRPO) and the target advantages
  ``T`` (centred on the group's median, or on the quantile / soft quantile that normalises the target).
* :func:`target_ratio` -- the bounded-ratio optimum ``r* = 1 - eps_low + (eps_low + eps_high) * sigmoid(T / tau)``.
* :func:`gbpo_per_token_loss` -- the advantage-weighted total variation ``|A| * |rho - r*|``.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "SCALE_REWARDS",
    "TARGET_BASELINES",
    "gbpo_advantages",
    "gbpo_per_token_loss",
    "importance_ratio",
    "ppo_br_epsilon",
    "ppo_clip_per_token_loss",
    "r2vpo_dual_update",
    "r2vpo_per_token_loss",
    "reward_trend",
    "target_ratio",
]

TARGET_BASELINES = ("median", "quantile", "soft_quantile", "mean")
SCALE_REWARDS = ("group", "batch", "none")

# Log-ratio clamp of the reference implementation (docs/algorithm.md, "Ratio and loss"):
# rho = exp(clamp(logp - logp_old, -20, 20)).
LOG_RATIO_CLAMP = 20.0
# Bisection steps for the soft quantile: the bracket shrinks by 2**-200, far below float64 resolution.
_BISECTION_STEPS = 200


def _check_epsilons(epsilon_low: float, epsilon_high: float) -> None:
    if not 0.0 < epsilon_low <= 1.0:
        raise ValueError(
            f"epsilon_low must be in (0, 1] (1 - epsilon_low is the lowest target ratio; 1 is the CEM limit), "
            f"got {epsilon_low}."
        )
    if not epsilon_high > 0.0 or not math.isfinite(epsilon_high):
        raise ValueError(f"epsilon_high must be a finite number > 0, got {epsilon_high}.")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0.0 or not math.isfinite(temperature):
        raise ValueError(
            f"temperature must be a finite number > 0 (tau of the sigmoid step; 1e-4 is the reference), "
            f"got {temperature}."
        )


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected standard deviation ignoring NaNs (NaN where fewer than two values), as TRL's ``nanstd``."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    variance = torch.nansum((x - mean) ** 2, dim=dim, keepdim=True) / (count - 1).clamp(min=1)
    variance = torch.where(count > 1, variance, torch.full_like(variance, float("nan")))
    return variance.sqrt().squeeze(dim)


def _soft_quantile(z: torch.Tensor, p: float, temperature: float) -> torch.Tensor:
    """Per-row threshold ``b`` with ``mean_i sigmoid((z_i - b) / temperature) = p`` over the non-NaN ``z_i``.

    ``z`` is (n, G) float64; returns (n,). The mean is strictly decreasing in ``b``, from 1 (b -> -inf) to
    0 (b -> +inf), so bisection on a bracket that holds every ``z`` with a margin of 60 temperatures finds
    the unique root. Rows that are all NaN get NaN.
    """
    valid = ~torch.isnan(z)
    count = valid.sum(dim=1).clamp(min=1)
    z_filled = torch.where(valid, z, torch.zeros_like(z))
    lo = torch.where(valid, z, torch.full_like(z, math.inf)).amin(dim=1) - 60.0 * temperature
    hi = torch.where(valid, z, torch.full_like(z, -math.inf)).amax(dim=1) + 60.0 * temperature
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        mean = (torch.sigmoid((z_filled - mid[:, None]) / temperature) * valid).sum(dim=1) / count
        too_many_above = mean > p  # threshold too low: move it up
        lo = torch.where(too_many_above, mid, lo)
        hi = torch.where(too_many_above, hi, mid)
    b = (lo + hi) / 2
    return torch.where(valid.any(dim=1), b, torch.full_like(b, float("nan")))


def gbpo_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    *,
    scale_rewards: str = "group",
    target_baseline: str = "median",
    epsilon_low: float = 0.3,
    epsilon_high: float = 0.3,
    temperature: float = 1e-4,
    std_eps: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Weight advantages ``A`` and target advantages ``T`` of GBPO for a batch of groups.

    For one prompt with rewards ``R_1..R_G`` (paper 4.5 and 5.3; docs/algorithm.md, "Advantages"):

    * ``mu = mean(R)``, ``sigma = std(R)`` (Bessel-corrected, as ``torch.std``),
    * ``A_i = (R_i - mu) / (sigma + std_eps)``  -- the z-score weight advantage, identical to TRL's GRPO advantage,
    * ``T_i = A_i - b`` where ``b`` is the threshold chosen by ``target_baseline``:

      - ``"median"`` (reference implementation): ``b`` = median of the group's ``A`` (``torch.quantile`` at 0.5,
        linear interpolation), i.e. ``T_i = (R_i - m) / (sigma + std_eps)``.
      - ``"quantile"`` (Cor. 4.7, asymmetric bounds): ``b`` = the ``alpha``-quantile, ``alpha = eps_high /
        (eps_low + eps_high)``, so that a fraction ``p = eps_low / (eps_low + eps_high)`` lies above it and the hard
        targets average 1. Equals ``"median"`` when ``eps_low == eps_high``.
      - ``"soft_quantile"`` (Theorem 4.1): ``b`` solves ``mean_i sigmoid((A_i - b) / temperature) = p`` by bisection,
        so the targets of :func:`target_ratio` average exactly 1 at the given finite temperature.
      - ``"mean"`` (ablation, paper 5.5): ``b = 0``, ``T = A``.

    ``scale_rewards`` follows TRL: ``"group"`` divides by the group's std, ``"batch"`` by the whole batch's std,
    ``"none"`` does not divide (``A_i = R_i - mu``, ``T_i = R_i - m``). Because the z-score is an increasing affine map
    of the rewards, the median of ``A`` is the z-score of the median reward, so the centring is the paper's.

    NaN rewards (TRL marks a completion no reward function could score so) are left out of every group statistic
    and get ``A = T = 0``. A group whose rewards are all equal gets ``A = 0``: it contributes no loss.

    Args:
        rewards: (B,) float tensor, the G completions of each prompt consecutive; B = n * G.
        num_generations: G, the group size (>= 1).
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"`` (TRL's ``scale_rewards``).
        target_baseline: ``"median"``, ``"quantile"``, ``"soft_quantile"`` or ``"mean"``.
        epsilon_low: lower bound ``1 - epsilon_low`` of the target ratio, in (0, 1].
        epsilon_high: upper bound ``1 + epsilon_high`` of the target ratio, > 0.
        temperature: tau of the sigmoid step (> 0); used by ``"soft_quantile"`` only, since the hard thresholds are its
            tau -> 0 limit.
        std_eps: added to the std before dividing (named so as not to be confused with TRL's ``delta``, the
            two-sided clip bound). 1e-4 is TRL's constant (so ``A`` equals ``GRPOTrainer``'s advantages); the reference
            verl code uses 1e-6.

    Returns:
        ``(advantages, target_advantages)``, both (B,) in the dtype of ``rewards``, without gradient.

    Raises:
        ValueError: ``rewards`` is not 1-D; B is not a multiple of ``num_generations``; ``num_generations < 1``;
            an unknown ``scale_rewards`` or ``target_baseline``; ``temperature <= 0``; ``epsilon_low`` outside (0, 1];
            ``epsilon_high <= 0``; ``std_eps < 0``.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor of shape (B,), got shape {tuple(rewards.shape)}.")
    if not isinstance(num_generations, int) or num_generations < 1:
        raise ValueError(f"num_generations must be an integer >= 1, got {num_generations!r}.")
    if rewards.numel() % num_generations != 0:
        raise ValueError(
            f"The number of rewards B={rewards.numel()} is not a multiple of num_generations={num_generations}: "
            "rewards must hold whole groups, the G completions of each prompt consecutive."
        )
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}.")
    if target_baseline not in TARGET_BASELINES:
        raise ValueError(f"target_baseline must be one of {TARGET_BASELINES}, got {target_baseline!r}.")
    _check_epsilons(epsilon_low, epsilon_high)
    _check_temperature(temperature)
    if not std_eps >= 0.0:
        raise ValueError(f"std_eps must be >= 0, got {std_eps}.")

    with torch.no_grad():
        # float64 throughout: the soft quantile resolves thresholds to a small fraction of tau = 1e-4.
        grouped = rewards.detach().to(torch.float64).view(-1, num_generations)
        mean = torch.nanmean(grouped, dim=1, keepdim=True)
        centred = grouped - mean
        if scale_rewards == "group":
            std = _nanstd(grouped, dim=1).unsqueeze(1) if num_generations > 1 else torch.zeros_like(mean)
            z = centred / (std + std_eps)
        elif scale_rewards == "batch":
            std = _nanstd(grouped) if grouped.numel() > 1 else torch.zeros((), dtype=grouped.dtype)
            z = centred / (std + std_eps)
        else:
            z = centred

        if target_baseline == "mean":
            threshold = torch.zeros_like(mean)
        elif target_baseline in ("median", "quantile"):
            alpha = 0.5 if target_baseline == "median" else epsilon_high / (epsilon_low + epsilon_high)
            threshold = torch.nanquantile(z, alpha, dim=1, keepdim=True)
        else:  # soft_quantile
            p = epsilon_low / (epsilon_low + epsilon_high)
            threshold = _soft_quantile(z, p, temperature).unsqueeze(1)

        advantages = torch.nan_to_num(z, nan=0.0)
        target_advantages = torch.nan_to_num(z - threshold, nan=0.0)
    return advantages.reshape(-1).to(rewards.dtype), target_advantages.reshape(-1).to(rewards.dtype)


def target_ratio(
    target_advantages: torch.Tensor,
    epsilon_low: float = 0.3,
    epsilon_high: float = 0.3,
    temperature: float = 1e-4,
) -> torch.Tensor:
    r"""The bounded-ratio optimum ``r* = 1 - eps_low + (eps_low + eps_high) * sigmoid(T / temperature)``.

    Theorem 4.1 of the paper (log-barrier regulariser of weight tau): a Fermi-Dirac step from ``1 - eps_low``
    (far below the threshold) to ``1 + eps_high`` (far above it). As tau -> 0 it is the hard step of the bounded-ratio
    trust region, and exactly ``1`` at the threshold when ``eps_low == eps_high``.

    Args:
        target_advantages: T, any shape (typically (B,)), from :func:`gbpo_advantages`.
        epsilon_low: in (0, 1].
        epsilon_high: > 0.
        temperature: tau > 0, in the units of ``T`` (z-scores when rewards are std-scaled).

    Returns:
        A tensor of the shape of ``target_advantages`` with values in ``[1 - eps_low, 1 + eps_high]``, no gradient.

    Raises:
        ValueError: ``temperature <= 0``, ``epsilon_low`` outside (0, 1] or ``epsilon_high <= 0``.
    """
    _check_epsilons(epsilon_low, epsilon_high)
    _check_temperature(temperature)
    t = target_advantages.detach()
    return 1.0 - epsilon_low + (epsilon_low + epsilon_high) * torch.sigmoid(t / temperature)


def importance_ratio(per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor) -> torch.Tensor:
    """Per-token ratio ``rho = exp(clamp(logp - logp_old, -20, 20))`` (reference implementation; docs/algorithm.md).

    Args:
        per_token_logps: (B, T) log-probabilities of the sampled tokens under the current policy (differentiable).
        old_per_token_logps: (B, T) the same under the policy that sampled them; detached here.

    Returns:
        (B, T) ratios; gradient flows through ``per_token_logps`` only (zero where the clamp is active).
    """
    log_ratio = per_token_logps - old_per_token_logps.detach()
    return torch.exp(torch.clamp(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def _check_logps(per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor) -> None:
    if per_token_logps.shape != old_per_token_logps.shape:
        raise ValueError(
            f"per_token_logps {tuple(per_token_logps.shape)} and old_per_token_logps "
            f"{tuple(old_per_token_logps.shape)} must have the same (B, T) shape."
        )


def _per_row(x: torch.Tensor, name: str, per_token_logps: torch.Tensor) -> torch.Tensor:
    """A per-completion (B,) / (B, 1) or per-token (B, T) constant, detached, as (B, 1) or (B, T)."""
    x = x.detach()
    if x.dim() == 1:
        x = x.unsqueeze(1)
    if x.dim() != 2 or x.shape[0] != per_token_logps.shape[0] or x.shape[1] not in (1, per_token_logps.shape[1]):
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; expected (B,), (B, 1) or (B, T) with (B, T) = "
            f"{tuple(per_token_logps.shape)}."
        )
    return x


def gbpo_per_token_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    target_ratios: torch.Tensor,
    tv_coef: float = 0.0,
) -> torch.Tensor:
    r"""Advantage-weighted total variation to the target ratio: ``(|A| + tv_coef) * |rho - r*|`` per token.

    BPO's loss (paper Prop. 4.6 and eq. 16; docs/algorithm.md, "Ratio and loss"): unlike PPO's clipped loss, the
    slope is the same on both sides of the target, so a ratio that overshoots ``r*`` is pulled back. With a
    sequence-level reward every token of completion ``i`` shares ``A_i`` and ``r*_i``. Aggregation over tokens is the
    caller's (the reference takes the token-mean over the mini-batch).

    Args:
        per_token_logps: (B, T) current-policy log-probabilities of the completion tokens; the only input with gradient.
        old_per_token_logps: (B, T) log-probabilities under the sampling policy (treated as constants).
        advantages: (B,), (B, 1) or (B, T) weight advantages ``A`` (treated as constants).
        target_ratios: (B,), (B, 1) or (B, T) target ratios ``r*`` from :func:`target_ratio` (constants).
        tv_coef: weight ``c_tv >= 0`` of the unweighted total-variation regulariser (eq. 16); 0 is the reference.

    Returns:
        (B, T) per-token losses (padding positions are not masked here).

    Raises:
        ValueError: ``tv_coef < 0``, or shapes that do not broadcast to (B, T).
    """
    if not tv_coef >= 0.0:
        raise ValueError(f"tv_coef must be >= 0, got {tv_coef}.")
    _check_logps(per_token_logps, old_per_token_logps)

    weight = _per_row(advantages, "advantages", per_token_logps).abs() + tv_coef
    target = _per_row(target_ratios, "target_ratios", per_token_logps)
    rho = importance_ratio(per_token_logps, old_per_token_logps)
    return weight * (rho - target).abs()


# ---------------------------------------------------------------------------------------------- R2VPO and PPO-BR
# The two other trust-region replacements compared with GBPO (docs/algorithm.md, "R2VPO and PPO-BR"). Their state
# across steps (R2VPO's dual variable, PPO-BR's entropy reference and reward window) lives in gbpo/trust_region.py.


def r2vpo_per_token_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    lagrange_multiplier: float,
) -> torch.Tensor:
    r"""R2VPO's primal loss per token: ``-rho * A + lambda * (rho - 1)^2``.

    Ratio-variance regularised policy optimisation (arXiv 2601.03320, 2605.26784): no clip; the surrogate
    ``E[rho A]`` is maximised under the soft constraint ``E[(rho - 1)^2] <= delta`` (a chi-square trust region),
    relaxed with the Lagrange multiplier ``lambda`` that :func:`r2vpo_dual_update` moves after each optimizer step.
    The gradient in ``log rho`` is ``rho * (-A + 2 lambda (rho - 1))``: it pushes a token up when ``A > 0`` until
    ``rho = 1 + A / (2 lambda)``, where the penalty balances the advantage.

    Args:
        per_token_logps: (B, T) current-policy log-probabilities (the only input with gradient).
        old_per_token_logps: (B, T) log-probabilities under the sampling policy (constants).
        advantages: (B,), (B, 1) or (B, T) advantages ``A`` (constants).
        lagrange_multiplier: ``lambda >= 0``, dimensionless.

    Returns:
        (B, T) per-token losses (padding not masked; aggregation is the caller's, the token mean as for GBPO).

    Raises:
        ValueError: ``lagrange_multiplier < 0`` or shapes that do not broadcast to (B, T).
    """
    if not lagrange_multiplier >= 0.0:
        raise ValueError(f"lagrange_multiplier (R2VPO's lambda) must be >= 0, got {lagrange_multiplier}.")
    _check_logps(per_token_logps, old_per_token_logps)
    rho = importance_ratio(per_token_logps, old_per_token_logps)
    return -rho * _per_row(advantages, "advantages", per_token_logps) + lagrange_multiplier * (rho - 1.0) ** 2


def r2vpo_dual_update(lagrange_multiplier: float, ratio_variance: float, delta: float, eta: float) -> float:
    r"""R2VPO's dual step after an optimizer step: ``lambda <- max(0, lambda + eta * (v - delta))``.

    Projected gradient ascent on the dual of the ratio-variance constraint (arXiv 2601.03320): ``lambda`` grows
    while the measured variance ``v = mean (rho - 1)^2`` over the step's loss tokens exceeds the target ``delta``
    and shrinks (never below 0) while it is under it. ``eta = 0`` keeps the fixed-penalty variant.

    Args:
        lagrange_multiplier: current ``lambda >= 0``.
        ratio_variance: ``v >= 0``, the token mean of ``(rho - 1)^2`` over the step (all processes).
        delta: the variance target ``> 0`` (0.01: a ratio standard deviation of about 0.1).
        eta: dual step size ``>= 0``.

    Returns:
        The new ``lambda`` (a float >= 0).

    Raises:
        ValueError: a negative ``lambda``, ``v`` or ``eta``, or ``delta <= 0``.
    """
    if not (lagrange_multiplier >= 0.0 and ratio_variance >= 0.0 and eta >= 0.0 and delta > 0.0):
        raise ValueError(
            f"r2vpo_dual_update needs lambda >= 0, v >= 0, eta >= 0 and delta > 0; got lambda={lagrange_multiplier}, "
            f"v={ratio_variance}, eta={eta}, delta={delta}."
        )
    return max(0.0, lagrange_multiplier + eta * (ratio_variance - delta))


def ppo_clip_per_token_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
) -> torch.Tensor:
    r"""PPO's clipped surrogate per token: ``-min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)``.

    Schulman et al. 2017 (arXiv 1707.06347, eq. 7), the per-token loss of GRPO and of PPO-BR (arXiv 2505.17714), whose
    clip range :func:`ppo_br_epsilon` changes every step. The ratio is :func:`importance_ratio` (clamped exp).

    Args:
        per_token_logps: (B, T) current-policy log-probabilities (the only input with gradient).
        old_per_token_logps: (B, T) sampling-policy log-probabilities (constants).
        advantages: (B,), (B, 1) or (B, T) advantages (constants).
        epsilon_low, epsilon_high: the clip range, ``0 < eps_low <= 1``, ``eps_high > 0``.

    Returns:
        (B, T) per-token losses; the gradient is zero where the clip is active for the advantage's sign.

    Raises:
        ValueError: epsilons out of range or shapes that do not broadcast to (B, T).
    """
    _check_epsilons(epsilon_low, epsilon_high)
    _check_logps(per_token_logps, old_per_token_logps)
    a = _per_row(advantages, "advantages", per_token_logps)
    rho = importance_ratio(per_token_logps, old_per_token_logps)
    return -torch.minimum(rho * a, rho.clamp(1.0 - epsilon_low, 1.0 + epsilon_high) * a)


def reward_trend(rewards: list[float] | tuple[float, ...], window: int) -> float:
    r"""PPO-BR's reward signal ``dR``: relative change of the mean reward between two consecutive windows.

    ``dR = (mean(last w) - mean(the w before)) / (|mean(the w before)| + 1e-8)`` (arXiv 2505.17714; docs/algorithm.md).
    0 until ``2 w`` values are known.

    Args:
        rewards: mean reward of each generation batch so far, oldest first.
        window: ``w >= 1``, in generation batches.

    Returns:
        ``dR`` as a float (unbounded; :func:`ppo_br_epsilon` clips it to [0, 1]).

    Raises:
        ValueError: ``window < 1``.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}.")
    if len(rewards) < 2 * window:
        return 0.0
    last = sum(rewards[-window:]) / window
    before = sum(rewards[-2 * window : -window]) / window
    return (last - before) / (abs(before) + 1e-8)


def ppo_br_epsilon(
    epsilon_0: float,
    entropy: float,
    entropy_ref: float,
    reward_change: float,
    lambda_1: float = 0.5,
    lambda_2: float = 0.3,
    epsilon_min: float = 0.1,
    epsilon_max: float = 0.4,
) -> tuple[float, float, float]:
    r"""PPO-BR's clip range ``eps_t = clamp(eps_0 (1 + l1 tanh(phi) - l2 tanh(psi)), eps_min, eps_max)``.

    Dual-signal trust region (arXiv 2505.17714): ``phi = clamp(H / H_ref, 0, 1)`` (policy entropy relative to the
    entropy at the first step) widens the range while the policy still explores; ``psi = clamp(dR, 0, 1)`` (the
    :func:`reward_trend`) narrows it while the reward rises.

    Args:
        epsilon_0: base range ``> 0``.
        entropy: ``H >= 0``, mean token entropy (nats).
        entropy_ref: ``H_ref > 0`` (nats).
        reward_change: ``dR``.
        lambda_1, lambda_2: weights ``>= 0`` of the entropy and reward terms.
        epsilon_min, epsilon_max: the clamp, ``0 < eps_min <= eps_max``.

    Returns:
        ``(eps_t, phi, psi)`` as floats.

    Raises:
        ValueError: an argument out of its range.
    """
    if not (epsilon_0 > 0 and entropy >= 0 and entropy_ref > 0 and lambda_1 >= 0 and lambda_2 >= 0):
        raise ValueError(
            f"ppo_br_epsilon needs epsilon_0 > 0, entropy >= 0, entropy_ref > 0, lambda_1 >= 0 and lambda_2 >= 0; got "
            f"{epsilon_0}, {entropy}, {entropy_ref}, {lambda_1}, {lambda_2}."
        )
    if not 0 < epsilon_min <= epsilon_max:
        raise ValueError(f"need 0 < epsilon_min <= epsilon_max, got {epsilon_min}, {epsilon_max}.")
    phi = min(max(entropy / entropy_ref, 0.0), 1.0)
    psi = min(max(reward_change, 0.0), 1.0)
    eps = epsilon_0 * (1.0 + lambda_1 * math.tanh(phi) - lambda_2 * math.tanh(psi))
    return min(max(eps, epsilon_min), epsilon_max), phi, psi
