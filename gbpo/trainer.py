"""`GBPOTrainer`: TRL's `GRPOTrainer` with GBPO's policy loss.

The shape follows TRL's own `trl/experimental/gmpo/gmpo_trainer.py`: generation, rewards, reference model, vLLM,
PEFT, DeepSpeed, logging and checkpoints are inherited unchanged. The hooks that change:

* `_calculate_rewards` keeps TRL's rewards, gathered over every process, and `_generate_and_score_completions` turns
  them into the per-completion target ratios ``r*`` (and GBPO's advantages, equal to TRL's), so groups split across
  ranks see their whole group; it also applies vote-N/train-M (``num_train_generations``);
* `_compute_loss` computes GBPO's loss when ``loss_type == "gbpo"`` (R2VPO's and PPO-BR's for ``"r2vpo"`` /
  ``"ppo_br"``, whose cross-step state is a `gbpo.trust_region.TrustRegionState` moved after every optimizer step and
  saved in checkpoints) and defers to TRL for every other loss type.

Benchmark evaluation during training is a callback, `gbpo.evaluation.callback.BenchmarkEvalCallback`.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.trainer.utils import get_config_model_id, nanmax, nanmin

from .checkpoints import ExactResumeMixin
from .config import OWN_LOSSES, GBPOConfig
from .loss import (
    gbpo_advantages,
    gbpo_per_token_loss,
    importance_ratio,
    ppo_clip_per_token_loss,
    r2vpo_per_token_loss,
    target_ratio,
)
from .model_card import ModelCardMixin
from .trust_region import TrustRegionState
from .vllm_cpu import (
    adapt_vllm_generation,
    configure_cpu_environment,
    generation_engine_line,
    vllm_engine_options,
    vllm_platform_is_cpu,
)

__all__ = ["GBPOTrainer"]


class GBPOTrainer(ExactResumeMixin, ModelCardMixin, GRPOTrainer):
    """Trainer for Group-relative Bounded Policy Optimization (GBPO).

    GBPO ("Bounded Ratio Reinforcement Learning", arXiv 2604.18578, 4.5 and 5.3) is BPO with GRPO's group-relative
    advantages: each completion's ratio ``rho`` is pulled towards the bounded-ratio optimum ``r*`` (``1 + eps_high``
    above the group's median reward, ``1 - eps_low`` below it) by the loss ``|A| * |rho - r*|``, token-mean over the
    mini-batch (docs/algorithm.md). A drop-in replacement for `trl.GRPOTrainer`: same arguments, same reward functions,
    same logging; with a TRL ``loss_type`` a `GBPOConfig` with the same keys as a `GRPOConfig` (defaults included)
    trains exactly as `GRPOTrainer` does: same advantages, losses, logged metrics and updated weights.

    Metrics logged with ``loss_type="gbpo"`` besides TRL's generation and reward metrics: ``entropy``, ``policy_loss``
    and ``kl`` (as TRL), ``gbpo/ratio/mean|min|max`` (``rho`` over loss tokens), ``gbpo/target_ratio/mean`` (``r*``
    averaged over the rows that have loss tokens) and ``gbpo/outside_bounds/low_mean|high_mean|region_mean`` (fraction
    of loss tokens with ``rho`` below ``1 - eps_low``, above ``1 + eps_high``, or either, whatever the advantage's
    sign). TRL's ``clip_ratio/*`` counts tokens whose clip is active for the advantage's sign; GBPO has no clip, so it
    does not log them (a TRL ``loss_type`` logs TRL's own).

    Benchmark evaluation during training (pass@k, maj@k every ``eval_steps``): add a
    `gbpo.evaluation.callback.BenchmarkEvalCallback` with ``trainer.add_callback``.

    Args:
        model, reward_funcs, args, **kwargs: as `trl.GRPOTrainer`; ``args`` defaults to a `GBPOConfig`.
    """

    _tag_names = ["trl", "gbpo"]
    _name = "GBPO"
    _paper = {  # the model card's method paper (see gbpo/model_card.py)
        "title": "Bounded Ratio Reinforcement Learning",
        "id": "2604.18578",
        "citation": "@misc{gbpo2026,\n    title         = {{Bounded Ratio Reinforcement Learning}},\n"
        "    eprint        = {2604.18578},\n    archivePrefix = {arXiv},\n}",
    }

    def __init__(
        self,
        model,
        reward_funcs,
        args: GBPOConfig | None = None,
        **kwargs,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = GBPOConfig(f"{model_name.split('/')[-1]}-GBPO")
        cpu_colocate = args.use_vllm and args.vllm_mode == "colocate" and vllm_platform_is_cpu()
        if cpu_colocate:
            configure_cpu_environment()
        enforce_eager = cpu_colocate if args.vllm_enforce_eager is None else args.vllm_enforce_eager
        with vllm_engine_options(args.vllm_dtype, enforce_eager or None):
            super().__init__(model, reward_funcs, args=args, **kwargs)
        if cpu_colocate:
            # TRL's colocated weight sync assumes a GPU build of vLLM; on a CPU it goes through vLLM's reload.
            adapt_vllm_generation(self.vllm_generation)
        self.accelerator.print(generation_engine_line(args, cpu_colocate))
        self._gathered_rewards_per_func = None
        # R2VPO / PPO-BR: state across optimizer steps (identical on every process), moved at each step's end
        self.trust_region = TrustRegionState.from_config(args) if args.loss_type in ("r2vpo", "ppo_br") else None
        self._last_mean_reward = None
        if self.trust_region is not None:
            self.add_callback(_TrustRegionStep(self))

    # ------------------------------------------------------------------ advantages and target ratios

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # TRL returns the rewards gathered over all processes; keep them for the target advantages.
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards_per_func = rewards_per_func
        if self.model.training:  # PPO-BR's reward window: the mean reward of the batch the next steps train on
            weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
            self._last_mean_reward = (rewards_per_func * weights).nansum(dim=1).mean().item()
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        rewards_per_func, self._gathered_rewards_per_func = self._gathered_rewards_per_func, None
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        num_trained = (self.args.num_train_generations or num_generations) if mode == "train" else num_generations
        if self.loss_type != "gbpo" and num_trained == num_generations:
            return output  # a TRL loss on every completion: TRL's advantages as they are

        # The same aggregation as TRL's "sum_then_normalize" (GBPOConfig rejects the other one for GBPO).
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        # Vote-N / train-M: every completion voted (the rewards above); the first M of each group are trained on, and
        # their advantages are computed among themselves, as TTRL's reference does. The choice depends only on the
        # global position, so every process keeps the same completions.
        trained = torch.zeros(rewards.numel() // num_generations, num_generations, dtype=torch.bool)
        trained[:, :num_trained] = True
        trained = trained.view(-1).to(rewards.device)
        advantages, target_advantages = torch.zeros_like(rewards), torch.zeros_like(rewards)
        advantages[trained], target_advantages[trained] = gbpo_advantages(
            rewards[trained],
            num_trained,
            scale_rewards=self.scale_rewards,
            target_baseline=self.args.target_baseline,
            epsilon_low=self.epsilon_low,
            epsilon_high=self.epsilon_high,
            temperature=self.args.gbpo_temperature,
        )
        local = output["advantages"].shape[0]
        process_slice = slice(self.accelerator.process_index * local, (self.accelerator.process_index + 1) * local)
        output["advantages"] = advantages[process_slice]
        if self.loss_type == "gbpo":
            output["target_ratios"] = target_ratio(
                target_advantages[process_slice], self.epsilon_low, self.epsilon_high, self.args.gbpo_temperature
            )
        if num_trained < num_generations:
            # Completions that only voted leave the loss and its token count.
            output["completion_mask"] = output["completion_mask"] * trained[process_slice].unsqueeze(1)
            loss_mask = output["completion_mask"] * output.get("tool_mask", 1)
            output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        return output

    # ------------------------------------------------------------------ loss

    def _compute_loss(self, model, inputs):
        if self.loss_type not in OWN_LOSSES:
            return super()._compute_loss(model, inputs)

        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            num_images=inputs.get("num_images"),
            pixel_attention_mask=inputs.get("pixel_attention_mask"),
            spatial_shapes=inputs.get("spatial_shapes"),
            num_tiles=inputs.get("num_tiles"),
            image_sizes=inputs.get("image_sizes"),
            token_type_ids=inputs.get("token_type_ids"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
            image_position_ids=inputs.get("image_position_ids"),
        )
        # As TRL: the entropy mask gates the policy term and the entropy bonus, not the KL term or the metrics.
        policy_mask = mask
        if self.top_entropy_quantile < 1.0:
            policy_mask = mask * self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)

        advantages = inputs["advantages"]
        target_ratios = inputs.get("target_ratios")  # GBPO only
        # TRL leaves old_per_token_logps out when they equal the current ones (one iteration, no buffered steps).
        old_per_token_logps = inputs.get("old_per_token_logps")
        old_per_token_logps = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps

        if self.loss_type == "gbpo":
            per_token_loss = gbpo_per_token_loss(
                per_token_logps, old_per_token_logps, advantages, target_ratios, tv_coef=self.args.tv_coef
            )
        elif self.loss_type == "r2vpo":
            lam = self.trust_region.lagrange_multiplier
            per_token_loss = r2vpo_per_token_loss(per_token_logps, old_per_token_logps, advantages, lam)
        else:  # ppo_br: PPO's clip with this step's adaptive range
            eps = self.trust_region.epsilon
            per_token_loss = ppo_clip_per_token_loss(per_token_logps, old_per_token_logps, advantages, eps, eps)
        if self.off_policy_mask_threshold is not None:
            per_token_loss = per_token_loss * self.get_off_policy_mask(
                advantages=advantages.unsqueeze(1),
                per_token_logps=per_token_logps,
                sampling_per_token_logps=inputs.get("sampling_per_token_logps", old_per_token_logps),
                mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold,
            )
        if self.use_vllm and self.vllm_importance_sampling_correction:
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]

        mode = "train" if self.model.training else "eval"
        # Token-mean over the whole mini-batch (reference): `num_items_in_batch` counts the tokens of the generation
        # batch on all processes; rescale it to one optimizer step, as TRL's "dapo" does.
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        policy_loss = (per_token_loss * policy_mask).sum() / normalizer
        loss = policy_loss

        ratio = importance_ratio(per_token_logps.detach(), old_per_token_logps)
        if self.beta != 0.0:
            ref_per_token_logps = inputs["ref_per_token_logps"]
            per_token_kl = (
                torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
            )
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(per_token_logps - old_per_token_logps)
            loss = loss + self.beta * (per_token_kl * mask).sum() / normalizer

        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if self._entropy_bonus_enabled:  # a fixed coefficient: GBPOConfig rejects the adaptive one
            entropy = (entropies * policy_mask).sum() / policy_mask.sum().clamp(min=1.0)
            loss = loss - self.entropy_coef * entropy / accumulation
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        if self.trust_region is not None and mode == "train":
            # the step's constraint / entropy signals, summed over every process, for the state update at step end
            sums = torch.stack([((ratio - 1.0) ** 2 * mask).sum(), (entropies.detach() * mask).sum(), mask.sum()])
            sums = self.accelerator.reduce(sums.float(), reduction="sum")
            self.trust_region.accumulate(variance_sum=sums[0].item(), entropy_sum=sums[1].item(), tokens=sums[2].item())
        self._log_gbpo_metrics(mode, mask, ratio, target_ratios, entropies, policy_loss * accumulation)
        if self.beta != 0.0:
            self._metrics[mode]["kl"].append(self._global_masked_mean(per_token_kl, mask))
        return loss

    def _global_masked_mean(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def _log_gbpo_metrics(self, mode, mask, ratio, target_ratios, entropies, policy_loss):
        """Log the step metrics of GBPO, R2VPO or PPO-BR (names and meanings in the class docstring), reduced over
        every process.

        ``mask`` (B, T) marks the loss tokens, ``ratio`` (B, T) is ``rho``, ``target_ratios`` (B,) is ``r*`` (GBPO;
        None for the other two, which log their state instead: ``r2vpo/*`` or ``ppo_br/*``).
        """
        metrics = self._metrics[mode]
        prefix = self.loss_type
        metrics["entropy"].append(self._global_masked_mean(entropies, mask))
        metrics["policy_loss"].append(self.accelerator.gather(policy_loss.detach()).mean().item())
        metrics[f"{prefix}/ratio/mean"].append(self._global_masked_mean(ratio, mask))
        masked_ratio = ratio.masked_fill(~mask.bool(), float("nan"))
        metrics[f"{prefix}/ratio/min"].append(nanmin(self.accelerator.gather(nanmin(masked_ratio))).item())
        metrics[f"{prefix}/ratio/max"].append(nanmax(self.accelerator.gather(nanmax(masked_ratio))).item())
        if self.trust_region is not None:
            for key, value in self.trust_region.metrics().items():  # the values this step's loss used
                metrics[key].append(value)
            return
        # Rows without loss tokens (completions that only voted, or masked by TRL) are not trained: leave them out.
        trained_rows = (mask.sum(dim=1) > 0).float()
        metrics["gbpo/target_ratio/mean"].append(self._global_masked_mean(target_ratios, trained_rows))
        low = (ratio < 1 - self.epsilon_low).float()
        high = (ratio > 1 + self.epsilon_high).float()
        metrics["gbpo/outside_bounds/low_mean"].append(self._global_masked_mean(low, mask))
        metrics["gbpo/outside_bounds/high_mean"].append(self._global_masked_mean(high, mask))
        metrics["gbpo/outside_bounds/region_mean"].append(self._global_masked_mean(torch.maximum(low, high), mask))

    # ------------------------------------------------------------------ R2VPO / PPO-BR state in checkpoints

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)  # before trainer_state.json marks the checkpoint complete
        if self.trust_region is not None and self.args.should_save:
            self.trust_region.save(output_dir)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if self.trust_region is not None and checkpoint is not None:
            self.trust_region.load(checkpoint)


class _TrustRegionStep(TrainerCallback):
    """Moves R2VPO's lambda / PPO-BR's clip range after every optimizer step (`TrustRegionState.end_step`)."""

    def __init__(self, trainer: GBPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.trust_region.end_step(args, self.trainer._last_mean_reward)
