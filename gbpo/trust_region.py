"""The state that R2VPO and PPO-BR carry from one optimizer step to the next (docs/algorithm.md, "R2VPO and PPO-BR").

* R2VPO (arXiv 2601.03320): the Lagrange multiplier ``lambda`` of the ratio-variance constraint, moved after every
  optimizer step by :func:`gbpo.loss.r2vpo_dual_update` from the step's ratio variance ``v``.
* PPO-BR (arXiv 2505.17714): the entropy reference ``H_ref`` (the first step's mean token entropy), the mean reward of
  every generation batch so far (the window of :func:`gbpo.loss.reward_trend` counts batches: a batch trained over
  several optimizer steps enters once) and the clip range ``eps_t`` that the next step uses, from
  :func:`gbpo.loss.ppo_br_epsilon`.

Within an optimizer step the trainer only *accumulates* (sums over micro-batches, already reduced over every process);
:meth:`TrustRegionState.end_step` turns the sums into the next step's ``lambda`` / ``eps_t``, so every micro-batch of a
step uses the same values and every process holds the same state. The state is a plain dict in checkpoints
(``trust_region.json``), so a resumed run continues it exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .loss import ppo_br_epsilon, r2vpo_dual_update, reward_trend

__all__ = ["TRUST_REGION_FILE", "TrustRegionState"]

TRUST_REGION_FILE = "trust_region.json"


@dataclass
class TrustRegionState:
    """Cross-step state of ``loss_type="r2vpo"`` or ``"ppo_br"`` (all values are floats in the loss's units).

    Attributes:
        loss_type: ``"r2vpo"`` or ``"ppo_br"``.
        lagrange_multiplier: R2VPO's ``lambda`` (>= 0) used by the current step.
        ratio_variance: R2VPO's ``v`` of the last finished step (nan before the first).
        epsilon: PPO-BR's clip range ``eps_t`` used by the current step.
        entropy_ref: PPO-BR's ``H_ref`` (nats; None until the first step ends).
        rewards: PPO-BR's mean reward of every training generation batch so far, oldest first.
        phi, psi: PPO-BR's entropy and reward signals behind ``epsilon``.
    """

    loss_type: str
    lagrange_multiplier: float = 0.0
    ratio_variance: float = math.nan
    epsilon: float = 0.0
    entropy_ref: float | None = None
    rewards: list[float] = field(default_factory=list)
    phi: float = 1.0
    psi: float = 0.0
    # per-step accumulators (sums over micro-batches, reduced over processes); not needed across steps
    _sums: dict[str, float] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, args) -> TrustRegionState:
        """The state before the first step, from a `GBPOConfig` with ``loss_type`` ``"r2vpo"`` or ``"ppo_br"``.

        PPO-BR's first step has ``H_1 = H_ref`` by definition, so ``phi = 1`` and, with no reward history,
        ``psi = 0``: ``eps_1 = clamp(eps_0 (1 + lambda_1 tanh 1))``.
        """
        state = cls(loss_type=args.loss_type, lagrange_multiplier=args.r2vpo_lambda_init)
        if args.loss_type == "ppo_br":
            state.epsilon, state.phi, state.psi = state._ppo_br(args, entropy=1.0, entropy_ref=1.0)
        return state

    @staticmethod
    def _ppo_br(args, entropy: float, entropy_ref: float, reward_change: float = 0.0) -> tuple[float, float, float]:
        return ppo_br_epsilon(
            args.epsilon,
            entropy,
            entropy_ref,
            reward_change,
            args.ppo_br_lambda_1,
            args.ppo_br_lambda_2,
            args.ppo_br_epsilon_min,
            args.ppo_br_epsilon_max,
        )

    def accumulate(self, **sums: float) -> None:
        """Add this micro-batch's sums (already summed over processes), e.g. ``variance_sum``, ``tokens``."""
        for key, value in sums.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)

    def add_batch_reward(self, mean_reward: float) -> None:
        """Enter a generation batch's mean reward into PPO-BR's window, once per batch (not once per optimizer step).

        The trainer calls it when a training batch is complete (after every dynamic-sampling round and row selection),
        with the mean reward of the rows it trains on. The window is part of the saved state, so a run resumed inside
        a batch's optimizer steps continues with the same window. A non-finite mean (no row scored) is not entered.
        """
        if self.loss_type == "ppo_br" and math.isfinite(mean_reward):
            self.rewards.append(float(mean_reward))

    def end_step(self, args) -> None:
        """Close an optimizer step: move ``lambda`` (R2VPO) or ``eps_t`` (PPO-BR) for the next step.

        Args:
            args: the `GBPOConfig` (the keys ``r2vpo_*`` / ``ppo_br_*`` and ``epsilon``). PPO-BR's reward trend is over
                the generation batches entered so far (:meth:`add_batch_reward`), ``ppo_br_reward_window`` batches
                per window.
        """
        sums, self._sums = self._sums, {}
        tokens = sums.get("tokens", 0.0)
        if tokens <= 0:
            return  # nothing trained in this step (all rows masked): keep the state
        if self.loss_type == "r2vpo":
            self.ratio_variance = sums["variance_sum"] / tokens
            self.lagrange_multiplier = r2vpo_dual_update(
                self.lagrange_multiplier, self.ratio_variance, args.r2vpo_delta, args.r2vpo_eta
            )
        elif self.loss_type == "ppo_br":
            entropy = sums["entropy_sum"] / tokens
            if self.entropy_ref is None:
                self.entropy_ref = max(entropy, 1e-8)
            change = reward_trend(self.rewards, args.ppo_br_reward_window)
            self.epsilon, self.phi, self.psi = self._ppo_br(args, entropy, self.entropy_ref, change)

    def metrics(self) -> dict[str, float]:
        """The values logged every step, under ``r2vpo/*`` or ``ppo_br/*``."""
        if self.loss_type == "r2vpo":
            return {"r2vpo/lambda": self.lagrange_multiplier, "r2vpo/ratio_variance": self.ratio_variance}
        return {"ppo_br/epsilon": self.epsilon, "ppo_br/phi": self.phi, "ppo_br/psi": self.psi}

    def save(self, directory: str | Path) -> None:
        state = {k: v for k, v in asdict(self).items() if k != "_sums"}
        (Path(directory) / TRUST_REGION_FILE).write_text(json.dumps(state))

    def load(self, directory: str | Path) -> bool:
        """Restore from a checkpoint directory; False when it has no state file (a run started before it existed).

        Raises:
            ValueError: the file belongs to another loss type.
        """
        path = Path(directory) / TRUST_REGION_FILE
        if not path.is_file():
            return False
        state = json.loads(path.read_text())
        if state["loss_type"] != self.loss_type:
            raise ValueError(
                f"{path} holds {state['loss_type']!r} state but this run has loss_type={self.loss_type!r}: resume "
                "with the same loss_type."
            )
        for key, value in state.items():
            setattr(self, key, value)
        self._sums = {}
        return True
