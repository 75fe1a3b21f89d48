"""GBPO under TRL's options: the sequence-level ratio (GSPO), normalize-then-sum multi-reward, and TRL's entropy bonus.

TRL's `GRPOConfig` offers these for its own losses; here is what they mean for GBPO's loss (docs/algorithm.md,
"GBPO with TRL's options"):

* ``importance_sampling_level="sequence"`` (GSPO, arXiv 2507.18071, eq. 7): the ratio of completion ``i`` is the
  length-normalised sequence ratio ``s_i = exp(mean_t log rho_{i,t})`` over its loss tokens, TRL's own definition,
  and GBPO's loss is ``|A_i| * |s_i - r*_i|``, one target per completion (:func:`gbpo_sequence_loss`). GBPO keeps its
  token-mean aggregation: the loss of completion ``i`` counts once per loss token, as TRL's ``dapo`` at the sequence
  level does (TRL warns that this weights a completion by its length; GSPO's paper averages over sequences).
* ``multi_objective_aggregation="normalize_then_sum"`` (GDPO, arXiv 2601.05242): each reward function is z-scored
  within its group, then the weighted scores are summed (:func:`normalize_then_sum_rewards`); TRL then scales that sum
  by its batch standard deviation, and so does GBPO (``scale_rewards="batch"`` on the sum): GBPO's advantages stay
  TRL's, and its median-centred targets act on the same sum.
* ``entropy_coef`` and ``use_adaptive_entropy`` (Skywork-OR1, arXiv 2505.22312): :class:`EntropyBonusMixin` applies
  TRL 1.16's entropy bonus and its adaptive controller to GBPO's, R2VPO's and PPO-BR's loss exactly as TRL's
  `GRPOTrainer._compute_loss` applies them to its own (the same coefficient schedule, the same ``entropy_coef``
  metric); TRL's own methods save and restore the controller in checkpoints.
"""

from __future__ import annotations

import torch

from .loss import _check_logps, _per_row

__all__ = ["EntropyBonusMixin", "gbpo_sequence_loss", "normalize_then_sum_rewards", "sequence_ratio"]


def sequence_ratio(
    per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """GSPO's length-normalised sequence ratio ``s_i = exp(sum_t m_t (logp_t - logp_old_t) / max(sum_t m_t, 1))``.

    Args:
        per_token_logps, old_per_token_logps: (B, T) current and sampling log-probabilities (only the first carries
            gradient).
        mask: (B, T) 0/1 loss tokens; a row without any has ratio 1.

    Returns:
        (B, 1) ratios, as TRL's ``importance_sampling_level="sequence"`` computes them.

    Raises:
        ValueError: shapes that are not both (B, T), or a mask of another shape.
    """
    _check_logps(per_token_logps, old_per_token_logps)
    if mask.shape != per_token_logps.shape:
        raise ValueError(f"mask must have the shape {tuple(per_token_logps.shape)}, got {tuple(mask.shape)}.")
    mask = mask.to(per_token_logps.dtype)
    log_ratio = ((per_token_logps - old_per_token_logps) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return torch.exp(log_ratio).unsqueeze(-1)


def gbpo_sequence_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    target_ratios: torch.Tensor,
    tv_coef: float = 0.0,
) -> torch.Tensor:
    r"""GBPO's loss on the sequence ratio: ``(|A_i| + tv_coef) * |s_i - r*_i|`` per completion (module docstring).

    With one loss token per completion ``s_i`` is that token's ratio, so this equals
    `gbpo.loss.gbpo_per_token_loss`.

    Args:
        per_token_logps, old_per_token_logps, mask: as :func:`sequence_ratio`.
        advantages: (B,) or (B, 1) weight advantages ``A`` (constants).
        target_ratios: (B,) or (B, 1) target ratios ``r*`` (constants).
        tv_coef: weight of the unweighted total-variation term (eq. 16 of the paper), >= 0.

    Returns:
        (B, 1) losses, one per completion; the caller broadcasts them over the loss tokens and aggregates.

    Raises:
        ValueError: ``tv_coef < 0`` or shapes that do not fit (B, T) / (B,).
    """
    if not tv_coef >= 0.0:
        raise ValueError(f"tv_coef must be >= 0, got {tv_coef}.")
    ratio = sequence_ratio(per_token_logps, old_per_token_logps, mask)
    first = per_token_logps[:, :1]
    weight = _per_row(advantages, "advantages", first).abs() + tv_coef
    return weight * (ratio - _per_row(target_ratios, "target_ratios", first)).abs()


def normalize_then_sum_rewards(
    rewards_per_func: torch.Tensor, reward_weights: torch.Tensor, num_generations: int
) -> torch.Tensor:
    """Each reward function z-scored within its group, weighted and summed (TRL 1.16's ``normalize_then_sum``).

    ``z_k = (R_k - mean_group(R_k)) / (std_group(R_k) + 1e-4)`` (std Bessel-corrected, NaN rewards left out), then
    ``sum_k w_k z_k`` with NaN counted as 0; a completion that no function scored gets NaN.

    Args:
        rewards_per_func: (B, K) rewards of K functions, the G completions of each prompt consecutive (B = n G).
        reward_weights: (K,) weights.
        num_generations: G.

    Returns:
        (B,) summed normalised rewards (float of ``rewards_per_func``'s dtype).

    Raises:
        ValueError: B not a multiple of G, or K not the length of ``reward_weights``.
    """
    from trl.trainer.utils import nanstd

    b, k = rewards_per_func.shape
    if b % num_generations or reward_weights.numel() != k:
        raise ValueError(
            f"rewards_per_func {tuple(rewards_per_func.shape)} must hold whole groups of num_generations="
            f"{num_generations} and one column per reward weight ({reward_weights.numel()})."
        )
    grouped = rewards_per_func.view(-1, num_generations, k)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    std = nanstd(grouped, dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(mean)
    scores = ((grouped - mean) / (std + 1e-4)).view(-1, k)
    summed = (scores * reward_weights.to(scores.device).unsqueeze(0)).nansum(dim=1)
    summed[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return summed


class EntropyBonusMixin:
    """TRL 1.16's entropy bonus for `GBPOTrainer`'s own losses (``entropy_coef``, ``use_adaptive_entropy``).

    The same as the block of `trl.GRPOTrainer._compute_loss` that TRL runs for its loss types: the bonus is the mean
    per-token entropy over the policy mask, divided by the accumulation steps; with the adaptive controller the
    coefficient in force is the one from the end of the previous optimizer step (0 while the entropy is above
    ``entropy_target``), and at each optimizer-step boundary the window's entropy over every process moves it by
    ``entropy_coef_delta`` within ``[entropy_coef_min, entropy_coef_max]``; ``entropy_coef`` is logged at each
    optimizer step of training.
    """

    def _entropy_bonus(self, entropies: torch.Tensor, policy_mask: torch.Tensor, mode: str) -> torch.Tensor:
        """The term to subtract from the loss (a scalar tensor with gradient through ``entropies``)."""
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        entropy = (entropies * policy_mask).sum() / policy_mask.sum().clamp(min=1.0) / accumulation
        if self.use_adaptive_entropy:
            coef = self.entropy_coef if self._last_world_entropy <= self.args.entropy_target else 0.0
        else:
            coef = self.entropy_coef
        if self.use_adaptive_entropy and mode == "train":
            stats = torch.stack([(entropies * policy_mask).sum(), policy_mask.sum()]).detach()
            window = self._entropy_window_stats
            self._entropy_window_stats = stats if window is None else window + stats
            if self.accelerator.sync_gradients:
                totals = self.accelerator.reduce(self._entropy_window_stats, reduction="sum")
                world_entropy = (totals[0] / totals[1].clamp(min=1.0)).item()
                if world_entropy <= self.args.entropy_target:
                    self.entropy_coef = min(
                        self.entropy_coef + self.args.entropy_coef_delta, self.args.entropy_coef_max
                    )
                else:
                    self.entropy_coef = max(
                        self.entropy_coef - self.args.entropy_coef_delta, self.args.entropy_coef_min
                    )
                self._last_world_entropy = world_entropy
                self._entropy_window_stats = None
        if mode == "train" and self.accelerator.sync_gradients:
            self._metrics[mode]["entropy_coef"].append(self.entropy_coef)
        return coef * entropy
