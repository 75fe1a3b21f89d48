"""The step metrics `GBPOTrainer` logs beside TRL's: the ratio of every loss type, GBPO's target ratio, R2VPO's and
PPO-BR's state, and which rows a generation batch trains (names and meanings in `GBPOTrainer`'s and `GBPOConfig`'s
docstrings; docs/algorithm.md, "Ratio and loss").

A mixin of `GBPOTrainer` (it uses the trainer's ``accelerator``, ``_metrics``, ``args``, ``loss_type``,
``epsilon_low``/``epsilon_high`` and ``trust_region``); every value is reduced over all processes, so each process
logs the same number.
"""

from __future__ import annotations

import torch
from trl.trainer.utils import nanmax, nanmin

from .rows import ADVANTAGE_ATOL

__all__ = ["TARGET_AT_1", "StepMetricsMixin"]

# A target ratio within this of 1 counts as "at 1" (the hard median's exact 1 comes out of float32 arithmetic).
TARGET_AT_1 = 1e-6


class StepMetricsMixin:
    """Logging helpers of `GBPOTrainer` (see the module docstring)."""

    def _log_rows(self, output, in_loss, groups_dropped, extra_rounds):
        """``rows/*`` metrics of a training generation batch (GBPOConfig's docstring says what each describes)."""
        device = output["advantages"].device
        carries = (output["advantages"].abs() > ADVANTAGE_ATOL) & in_loss.to(device)
        totals = self.accelerator.gather(torch.tensor([int(carries.sum()), len(in_loss)], device=device))
        with_gradient, rows = totals.view(-1, 2).sum(0).tolist()
        metrics = self._metrics["train"]
        steps_per_optimizer_step = self.args.steps_per_generation / self.args.gradient_accumulation_steps
        metrics["rows/trained_per_step"].append(rows / steps_per_optimizer_step)
        metrics["rows/with_gradient_frac"].append(with_gradient / max(rows, 1))
        metrics["rows/groups_dropped"].append(float(groups_dropped))
        metrics["rows/extra_generation_rounds"].append(float(extra_rounds))

    def _global_masked_mean(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def _log_gbpo_metrics(self, mode, mask, ratio, target_ratios, entropies, policy_loss, advantages):
        """Log the step metrics of GBPO, R2VPO or PPO-BR (names and meanings in the class docstring), reduced over
        every process.

        ``mask`` (B, T) marks the loss tokens, ``ratio`` (B, T) is ``rho``, ``target_ratios`` (B,) is ``r*`` (GBPO;
        None for the other two, which log their state instead: ``r2vpo/*`` or ``ppo_br/*``), ``advantages`` (B,) is
        ``A`` (for TRL's ``clip_ratio/*``, :meth:`_log_clip_metrics`).
        """
        metrics = self._metrics[mode]
        metrics["entropy"].append(self._global_masked_mean(entropies, mask))
        metrics["policy_loss"].append(self.accelerator.gather(policy_loss.detach()).mean().item())
        if self.trust_region is not None:
            state = self.trust_region.metrics()  # the values this step's loss used
            for key, value in state.items():
                metrics[key].append(value)
            eps = state.get("ppo_br/epsilon")  # PPO-BR: its own range; R2VPO has none, so the config's epsilons
            self._log_ratio_metrics(mode, mask, ratio, eps or self.epsilon_low, eps or self.epsilon_high)
            self._log_clip_metrics(mode, mask, ratio, advantages, eps or self.epsilon_low, eps or self.epsilon_high)
            return
        self._log_ratio_metrics(mode, mask, ratio, self.epsilon_low, self.epsilon_high)
        self._log_clip_metrics(mode, mask, ratio, advantages, self.epsilon_low, self.epsilon_high)
        # Rows without loss tokens (completions that only voted, or masked by TRL) are not trained: leave them out.
        trained_rows = (mask.sum(dim=1) > 0).float()
        metrics["gbpo/target_ratio/mean"].append(self._global_masked_mean(target_ratios, trained_rows))

    def _log_target_sides(self, targets: torch.Tensor) -> None:
        """``gbpo/target_ratio/above_1|below_1|at_1``: the fractions of a training generation batch's trained
        completions whose target ratio ``targets`` (N,) (gathered over every process) is above ``1 + TARGET_AT_1``,
        below ``1 - TARGET_AT_1`` or within it. Under the hard median a group's majority sits at its median and
        gets target 1 (no gradient at ratio 1); the soft quantile's targets of a group average 1 and are two-sided."""
        if targets.numel() == 0:
            return
        above, below = (targets > 1 + TARGET_AT_1).float().mean(), (targets < 1 - TARGET_AT_1).float().mean()
        metrics = self._metrics["train"]
        metrics["gbpo/target_ratio/above_1"].append(above.item())
        metrics["gbpo/target_ratio/below_1"].append(below.item())
        metrics["gbpo/target_ratio/at_1"].append(1.0 - above.item() - below.item())

    def _log_clip_metrics(self, mode, mask, ratio, advantages, epsilon_low, epsilon_high):
        """TRL's ``clip_ratio/low_mean|high_mean|region_mean|low_min|high_max`` for GBPOTrainer's own losses, with TRL
        1.16's definitions (`GRPOTrainer._compute_loss`): the loss tokens where PPO's clip is active for the
        advantage's sign (``rho < 1 - eps_low`` with ``A < 0``, ``rho > 1 + eps_high`` with ``A > 0``), as a fraction
        over every process, and the smallest / largest per-completion fraction. PPO-BR clips there; GBPO and R2VPO do
        not clip (their losses pull such a ratio back), so for them these count the tokens PPO would have clipped,
        logged under TRL's names so that every loss type reports the same keys."""
        advantages = advantages.reshape(-1, 1)
        low = ((ratio < 1 - epsilon_low) & (advantages < 0)).float()
        high = ((ratio > 1 + epsilon_high) & (advantages > 0)).float()
        mask = mask.float()
        sums = self.accelerator.reduce(
            torch.stack([(x * mask).sum() for x in (low, high, torch.maximum(low, high), mask)]), reduction="sum"
        )
        low_mean, high_mean, region_mean = (sums[:3] / sums[3].clamp(min=1.0)).tolist()
        per_row = mask.sum(-1)  # TRL's per-completion means (NaN for a completion without loss tokens)
        low_rows = self.accelerator.gather((low * mask).sum(-1) / per_row)
        high_rows = self.accelerator.gather((high * mask).sum(-1) / per_row)
        metrics = self._metrics[mode]
        metrics["clip_ratio/low_mean"].append(low_mean)
        metrics["clip_ratio/high_mean"].append(high_mean)
        metrics["clip_ratio/region_mean"].append(region_mean)
        metrics["clip_ratio/low_min"].append(nanmin(low_rows).item())
        metrics["clip_ratio/high_max"].append(nanmax(high_rows).item())

    def _log_ratio_metrics(self, mode, mask, ratio, epsilon_low, epsilon_high):
        """The ratio metrics every loss type logs under the same names: ``gbpo/ratio/mean|min|max`` (``rho`` over the
        loss tokens ``mask`` (B, T), ``ratio`` (B, T)) and ``gbpo/outside_bounds/low_mean|high_mean|region_mean``
        (fraction of loss tokens with ``rho`` below ``1 - epsilon_low``, above ``1 + epsilon_high``, or either,
        whatever the advantage's sign), reduced over every process."""
        mask = mask.float()
        low, high = (ratio < 1 - epsilon_low).float(), (ratio > 1 + epsilon_high).float()
        # one reduction, one gather and two host syncs for the six values (were six of each)
        sums = torch.stack([(x * mask).sum() for x in (ratio, low, high, torch.maximum(low, high), mask)])
        sums = self.accelerator.reduce(sums, reduction="sum")
        masked_ratio = ratio.masked_fill(~mask.bool(), float("nan"))
        extremes = self.accelerator.gather(torch.stack([nanmin(masked_ratio), nanmax(masked_ratio)])).view(-1, 2)
        mean, low_mean, high_mean, region_mean = (sums[:4] / sums[4].clamp(min=1.0)).tolist()
        smallest, largest = torch.stack([nanmin(extremes[:, 0]), nanmax(extremes[:, 1])]).tolist()
        metrics = self._metrics[mode]
        metrics["gbpo/ratio/mean"].append(mean)
        metrics["gbpo/ratio/min"].append(smallest)
        metrics["gbpo/ratio/max"].append(largest)
        metrics["gbpo/outside_bounds/low_mean"].append(low_mean)
        metrics["gbpo/outside_bounds/high_mean"].append(high_mean)
        metrics["gbpo/outside_bounds/region_mean"].append(region_mean)

    def _relog_importance_sampling(self, output, rows):
        """Replace TRL's ``sampling/importance_sampling_ratio/min|mean|max`` of a generation round by their values
        over the rows ``rows`` (B,) bool, the trained rows of vote-N/train-M: the other rows' old log-probs were not
        computed, so TRL counted them with ratio 1. Reduced over processes as TRL does."""
        ratio = output["importance_sampling_ratio"]
        rows = rows.to(ratio.device)
        if ratio.size(1) == 1:  # sequence_* modes: one ratio per row
            flat = ratio[rows].flatten()
        else:  # token_* modes: the loss tokens of the rows
            mask = (output["completion_mask"] * output.get("tool_mask", 1)).bool()
            flat = ratio[rows][mask[rows]]
        zero = torch.tensor(0.0, device=ratio.device)
        local = [flat.min(), flat.mean(), flat.max()] if flat.numel() else [zero, zero, zero]
        metrics = self._metrics["train"]
        low, mean, high = (self.accelerator.gather(value) for value in local)
        for key, value in (("min", nanmin(low)), ("mean", mean.nanmean()), ("max", nanmax(high))):
            metrics[f"sampling/importance_sampling_ratio/{key}"][-1] = value.item()
