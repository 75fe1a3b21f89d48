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

import contextlib
import math

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.trainer.utils import get_config_model_id

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
from .row_passes import RowPassesMixin
from .rows import (
    concat_rows,
    informative_rows,
    rows_per_process,
    select_rows,
    take_rows,
    trained_mask,
)
from .step_metrics import StepMetricsMixin
from .trl_options import EntropyBonusMixin, gbpo_sequence_loss, normalize_then_sum_rewards, sequence_ratio
from .trust_region import TrustRegionState
from .vllm_cpu import (
    adapt_vllm_generation,
    colocated_kv_cache_options,
    configure_cpu_environment,
    generation_engine_line,
    vllm_engine_options,
    vllm_platform_is_cpu,
)

__all__ = ["GBPOTrainer"]


class GBPOTrainer(ExactResumeMixin, ModelCardMixin, StepMetricsMixin, RowPassesMixin, EntropyBonusMixin, GRPOTrainer):
    """Trainer for Group-relative Bounded Policy Optimization (GBPO).

    GBPO ("Bounded Ratio Reinforcement Learning", arXiv 2604.18578, 4.5 and 5.3) is BPO with GRPO's group-relative
    advantages: each completion's ratio ``rho`` is pulled towards the bounded-ratio optimum ``r*`` (``1 + eps_high``
    above the group's median reward, ``1 - eps_low`` below it) by the loss ``|A| * |rho - r*|``, token-mean over the
    mini-batch (docs/algorithm.md). A drop-in replacement for `trl.GRPOTrainer`: same arguments, same reward functions,
    same logging; with a TRL ``loss_type`` a `GBPOConfig` with the same keys as a `GRPOConfig` (defaults included)
    trains exactly as `GRPOTrainer` does: same advantages, losses, logged metrics and updated weights, and logs the
    ratio metrics below (``gbpo/ratio/*``, ``gbpo/outside_bounds/*`` with TRL's ``epsilon``/``epsilon_high``) on top,
    so that every loss type's ratio can be compared under one name.

    Metrics logged with ``loss_type="gbpo"`` besides TRL's generation and reward metrics: ``entropy``, ``policy_loss``
    and ``kl`` (as TRL), ``gbpo/ratio/mean|min|max`` (``rho`` over loss tokens), ``gbpo/target_ratio/mean`` (``r*``
    averaged over the rows that have loss tokens), ``gbpo/target_ratio/above_1|below_1|at_1`` (per generation batch:
    the fraction of trained completions whose ``r*`` is above, below or within 1e-6 of 1; a completion at 1 gets no
    gradient at ratio 1) and ``gbpo/outside_bounds/low_mean|high_mean|region_mean`` (fraction
    of loss tokens with ``rho`` below ``1 - eps_low``, above ``1 + eps_high``, or either, whatever the advantage's
    sign). TRL's ``clip_ratio/*`` counts tokens whose clip is active for the advantage's sign; GBPO has no clip, so it
    does not log them (a TRL ``loss_type`` logs TRL's own).

    ``loss_type="r2vpo"`` and ``"ppo_br"`` (docs/algorithm.md, "R2VPO and PPO-BR") log ``entropy``, ``policy_loss``,
    ``gbpo/ratio/*`` and ``gbpo/outside_bounds/*`` (PPO-BR against its step's ``eps_t``, R2VPO, which has no range,
    against ``epsilon``/``epsilon_high``) and their state: ``r2vpo/lambda`` and ``r2vpo/ratio_variance``, or
    ``ppo_br/epsilon``, ``ppo_br/phi`` and ``ppo_br/psi`` (the values the step used).

    TRL's options under GBPO's loss (gbpo/trl_options.py, docs/algorithm.md "GBPO with TRL's options"):
    ``importance_sampling_level="sequence"`` (GBPO on GSPO's sequence ratio), ``multi_objective_aggregation=
    "normalize_then_sum"``, ``entropy_coef`` and ``use_adaptive_entropy`` (TRL's controller), and TRL's
    ``clip_ratio/*`` and ``entropy_coef`` metrics for every loss type.

    Benchmark evaluation during training (pass@k, maj@k every ``eval_steps``): add a
    `gbpo.evaluation.callback.BenchmarkEvalCallback` with ``trainer.add_callback``.

    Args:
        model, reward_funcs, args, **kwargs: as `trl.GRPOTrainer`; ``args`` defaults to a `GBPOConfig`.
            ``reward_funcs`` may be None when an ``environment_factory`` whose environment defines ``get_reward``
            owns the reward (TRL's rule and TRL's error when there is no reward source at all).
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
        reward_funcs=None,
        args: GBPOConfig | None = None,
        **kwargs,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = GBPOConfig(f"{model_name.split('/')[-1]}-GBPO")
        cpu_colocate = args.use_vllm and args.vllm_mode == "colocate" and vllm_platform_is_cpu()
        kv_cache, kv_line = {}, None
        if cpu_colocate:  # the KV cache sized from the job, where vLLM would take a share of the machine's RAM
            configure_cpu_environment()
            data, tokenizer = kwargs.get("train_dataset"), kwargs.get("processing_class")
            kv_cache, kv_line = colocated_kv_cache_options(model, args, data, tokenizer)
        enforce_eager = cpu_colocate if args.vllm_enforce_eager is None else args.vllm_enforce_eager
        colocate = args.use_vllm and args.vllm_mode == "colocate"  # without vLLM there is no engine to configure
        options = vllm_engine_options(args.vllm_dtype, enforce_eager or None, kv_cache)
        with options if colocate else contextlib.nullcontext():
            super().__init__(model, reward_funcs, args=args, **kwargs)
        if cpu_colocate:
            # TRL's colocated weight sync assumes a GPU build of vLLM; on a CPU it goes through vLLM's reload.
            adapt_vllm_generation(self.vllm_generation)
        self.accelerator.print("\n".join(filter(None, [generation_engine_line(args, cpu_colocate), kv_line])))
        self._gathered_rewards_per_func = None
        # R2VPO / PPO-BR: state across optimizer steps (identical on every process), moved at each step's end
        self.trust_region = TrustRegionState.from_config(args) if args.loss_type in ("r2vpo", "ppo_br") else None
        if self.trust_region is not None:
            self.add_callback(_TrustRegionStep(self))

    # ------------------------------------------------------------------ advantages and target ratios

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # TRL returns the rewards gathered over all processes; keep them for the target advantages.
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _weighted_rewards(self, rewards_per_func):
        """(N,) rewards from (N, num_reward_funcs): weighted by ``reward_weights`` and summed, NaN counted as 0 (TRL's
        "sum_then_normalize" reward, the one TRL logs as ``reward``)."""
        return (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)

    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        args = self.args
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        num_trained = (args.num_train_generations or num_generations) if mode == "train" else num_generations
        drop_groups = mode == "train" and args.drop_uninformative_groups
        if num_trained == num_generations and not drop_groups:
            scored = self._score_round(super()._generate_and_score_completions(inputs), num_generations, num_trained)
            output, rewards = scored[0], scored[3]
            if mode == "train" and self.loss_type in OWN_LOSSES:  # a TRL loss type logs exactly TRL's metrics
                every_row = torch.ones(output["advantages"].numel(), dtype=torch.bool)
                self._log_rows(output, every_row, 0, 0)
                self._enter_batch_reward(rewards, every_row)
            return output

        # Rows are dropped: the log-prob passes that TRL's method does not itself use run afterwards on the kept rows.
        rounds = [self._generate_round(inputs, num_generations, num_trained)]
        cap = len(inputs) * num_trained // num_generations  # rows per process of the full vote-N/train-M batch
        while drop_groups and len(rounds) <= args.max_extra_generation_rounds:
            informative = sum(int((r[1] & r[2]).sum()) for r in rounds)
            fewest = self.accelerator.gather(torch.tensor([informative], device=self.accelerator.device)).min()
            if fewest >= cap:
                break
            rounds.append(
                self._generate_round(self._extra_prompts(len(inputs), len(rounds)), num_generations, num_trained)
            )
        outputs, candidates, informative, deferred, rewards = zip(*rounds, strict=True)
        device = self.accelerator.device
        candidates, informative = torch.cat(candidates), torch.cat(informative)
        steps = args.steps_per_generation
        if drop_groups:
            counts = self.accelerator.gather(torch.tensor([int((candidates & informative).sum())], device=device))
            num_rows = rows_per_process(counts.tolist(), cap, steps)
        else:
            num_rows = cap
        index, in_loss = select_rows(candidates, informative if drop_groups else candidates, num_rows)
        pad_token_id = self._tokenizer.pad_token_id  # what TRL pads with
        precomputed = "computed" in deferred[0]  # a log-prob pass ran on the wider batch (vLLM's IS correction)
        output = take_rows(concat_rows(outputs, pad_token_id), index, pad_token_id, trim_prompt=not precomputed)
        output["completion_mask"] = output["completion_mask"] * in_loss.to(output["completion_mask"].device)[:, None]
        output["in_loss"] = in_loss.to(output["completion_mask"].device)  # filler rows: in no loss's denominator
        if precomputed:
            # A narrower round's prompts were left-padded by `concat_rows` after its old log-probs were computed: the
            # model places tokens by column, so those log-probs are redone where the rows now sit.
            # Every process decides alike: under ZeRO-3 a forward pass needs all of them.
            widths = torch.cat([torch.full((len(o["prompt_ids"]),), o["prompt_ids"].size(1)) for o in outputs])
            shifted = torch.tensor([int((widths[index] < output["prompt_ids"].size(1)).any())], device=device)
            if self.accelerator.gather(shifted).any():
                self._run_deferred_logps(output, ["old"])
            else:  # rows that only voted (filler here) have no old log-probs (NaN): they are in no loss term
                output["old_per_token_logps"] = output["old_per_token_logps"].nan_to_num(0.0)
        self._run_deferred_logps(output, deferred[0])
        loss_mask = output["completion_mask"] * output.get("tool_mask", 1)
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()

        self._enter_batch_reward(torch.cat(rewards)[index.to(rewards[0].device)], in_loss)
        groups_dropped = int(self.accelerator.gather(torch.tensor([int((~informative).sum())], device=device)).sum())
        self._log_rows(output, in_loss, groups_dropped // num_generations if drop_groups else 0, len(rounds) - 1)
        return output

    def _score_round(self, output, num_generations, num_trained):
        """Advantages (and GBPO's target ratios) among the trained rows of each group, from the gathered rewards.

        Returns the output, the local rows' (B,) trained and informative-group masks, and their (B,) rewards as TRL
        logs them (`_weighted_rewards`).
        """
        rewards_per_func, self._gathered_rewards_per_func = self._gathered_rewards_per_func, None
        local = output["advantages"].shape[0]
        process_slice = slice(self.accelerator.process_index * local, (self.accelerator.process_index + 1) * local)
        trained = trained_mask(rewards_per_func.size(0), num_generations, num_trained).to(rewards_per_func.device)
        logged_rewards = self._weighted_rewards(rewards_per_func)[process_slice]
        if self.loss_type != "gbpo" and num_trained == num_generations:
            advantages = self.accelerator.gather(output["advantages"])  # TRL's, for either aggregation
        else:
            # TRL's aggregation of the reward functions, then GBPO's advantages and target advantages.
            scale_rewards = self.scale_rewards
            if self.multi_objective_aggregation == "normalize_then_sum":  # all rows train (GBPOConfig)
                rewards = normalize_then_sum_rewards(rewards_per_func, self.reward_weights, num_generations)
                scale_rewards = "batch"  # TRL scales the sum by its batch std (gbpo/trl_options.py)
            else:
                rewards = self._weighted_rewards(rewards_per_func)
                rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan  # no function scored it
            advantages, target_advantages = torch.zeros_like(rewards), torch.zeros_like(rewards)
            advantages[trained], target_advantages[trained] = gbpo_advantages(
                rewards[trained],
                num_trained,
                scale_rewards=scale_rewards,
                target_baseline=self.args.target_baseline,
                epsilon_low=self.epsilon_low,
                epsilon_high=self.epsilon_high,
                temperature=self.args.gbpo_temperature,
            )
            output["advantages"] = advantages[process_slice]
            if self.loss_type == "gbpo":
                temperature = self.args.gbpo_temperature
                targets = target_ratio(target_advantages, self.epsilon_low, self.epsilon_high, temperature)
                output["target_ratios"] = targets[process_slice]
                if self.model.training:
                    self._log_target_sides(targets[trained])
        informative = informative_rows(advantages, trained, num_generations)
        return output, trained[process_slice].cpu(), informative[process_slice].cpu(), logged_rewards

    def _enter_batch_reward(self, rewards, in_loss):
        """PPO-BR: enter the mean reward of the rows this training batch trains on (``rewards`` (B,) of this process's
        rows, ``in_loss`` (B,) bool), over every process, into the reward window: once per generation batch."""
        if self.trust_region is None or self.loss_type != "ppo_br":
            return
        in_loss = in_loss.to(rewards.device)
        local = torch.stack([rewards[in_loss].sum(), in_loss.sum().to(rewards.dtype)])
        total, count = self.accelerator.reduce(local, reduction="sum").tolist()
        self.trust_region.add_batch_reward(total / count if count else math.nan)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *a, **kw):
        result = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, *a, **kw)
        captured = getattr(self, "_captured_logps", None)
        if captured is not None:  # TRL's loss pass (`_compute_trl_loss`): keep its log-probs for the ratio metrics
            captured.append(result[0].detach())
        return result

    # ------------------------------------------------------------------ loss

    def _compute_loss(self, model, inputs):
        if self.loss_type not in OWN_LOSSES:
            return self._compute_trl_loss(model, inputs)

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

        sequence_level = self.importance_sampling_level == "sequence"  # GBPO only (GBPOConfig)
        if self.loss_type == "gbpo" and sequence_level:  # (B, 1): one loss per completion, on each of its tokens
            per_token_loss = gbpo_sequence_loss(
                per_token_logps, old_per_token_logps, mask, advantages, target_ratios, tv_coef=self.args.tv_coef
            )
        elif self.loss_type == "gbpo":
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
        # Token-mean over the whole mini-batch (reference): the loss tokens of this optimizer step's micro-batches on
        # all processes; the data-parallel gradient average divides by the processes again.
        normalizer = self._step_token_count(inputs, mode) / self.accelerator.num_processes
        policy_loss = (per_token_loss * policy_mask).sum() / normalizer
        loss = policy_loss

        if sequence_level:  # the ratio the loss acts on, on every token of its completion
            ratio = sequence_ratio(per_token_logps.detach(), old_per_token_logps, mask).expand_as(per_token_logps)
        else:
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
        if self._entropy_bonus_enabled:  # TRL's bonus and adaptive controller (gbpo/trl_options.py)
            loss = loss - self._entropy_bonus(entropies, policy_mask, mode)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        if self.trust_region is not None and mode == "train":
            # the step's constraint / entropy signals, summed over every process, for the state update at step end
            sums = torch.stack([((ratio - 1.0) ** 2 * mask).sum(), (entropies.detach() * mask).sum(), mask.sum()])
            variance_sum, entropy_sum, tokens = self.accelerator.reduce(sums.float(), reduction="sum").tolist()
            self.trust_region.accumulate(variance_sum=variance_sum, entropy_sum=entropy_sum, tokens=tokens)
        self._log_gbpo_metrics(mode, mask, ratio, target_ratios, entropies, policy_loss * accumulation, advantages)
        if self.beta != 0.0:
            self._metrics[mode]["kl"].append(self._global_masked_mean(per_token_kl, mask))
        return loss

    def _compute_trl_loss(self, model, inputs):
        """TRL's loss for a TRL ``loss_type``, unchanged, plus the ratio metrics every loss type logs
        (`_log_ratio_metrics`), from the log-probs of TRL's own forward pass."""
        in_loss = inputs.get("in_loss")
        if in_loss is not None and in_loss.any() and not in_loss.all():
            # Filler rows (`gbpo.rows.select_rows`) have no loss tokens, but TRL's sequence means ("grpo", "sapo",
            # "luspo") and "dr_grpo" count rows: the loss is TRL's on the kept rows alone.
            inputs = {k: v[in_loss] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in inputs.items()}
        self._captured_logps = []
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            captured, self._captured_logps = self._captured_logps, None
        per_token_logps = captured[0]
        old_per_token_logps = inputs.get("old_per_token_logps")
        old_per_token_logps = per_token_logps if old_per_token_logps is None else old_per_token_logps
        mask = (
            inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
        )
        ratio = importance_ratio(per_token_logps, old_per_token_logps)
        mode = "train" if self.model.training else "eval"
        self._log_ratio_metrics(mode, mask, ratio, self.epsilon_low, self.epsilon_high)
        return loss

    def _step_token_count(self, inputs, mode: str) -> torch.Tensor:
        """Loss tokens of the optimizer step ``inputs`` belongs to, summed over its micro-batches and the processes.

        TRL buffers the ``steps_per_generation`` micro-batches of a generation batch (`_buffered_inputs`) and feeds
        micro-step ``s`` the one at ``s % steps_per_generation``; an optimizer step is ``gradient_accumulation_steps``
        consecutive micro-steps (GBPOConfig makes that divide ``steps_per_generation * num_iterations``, so one step
        never spans two generation batches). In evaluation the batch is the step.

        A loss token counts when it carries weight (`_weighted_tokens`): tokens that vLLM's importance-sampling
        correction masks (ratio 0, the ``*_mask`` modes) are in no term of the loss unless the KL term acts on them.
        """
        buffered = getattr(self, "_buffered_inputs", None)
        if mode != "train" or not buffered:
            if not self._is_masks_tokens(inputs):
                return inputs["num_items_in_batch"].clamp(min=1.0)
            return self.accelerator.gather(self._weighted_tokens(inputs).sum().float()).sum().clamp(min=1.0)
        cached = getattr(self, "_buffered_token_counts", None)
        if cached is None or cached[0] is not buffered:
            local = torch.stack([self._weighted_tokens(b).sum().float() for b in buffered])
            cached = (buffered, self.accelerator.gather(local).view(-1, len(buffered)).sum(0))
            self._buffered_token_counts = cached
        accumulation = self.args.gradient_accumulation_steps
        first = (self._step // accumulation) * accumulation
        chunks = [step % len(buffered) for step in range(first, first + accumulation)]
        return cached[1][chunks].sum().clamp(min=1.0)

    def _weighted_tokens(self, batch) -> torch.Tensor:
        """(B, T) 0/1: the loss tokens of ``batch`` that carry weight in the loss. With vLLM's importance-sampling
        correction and no KL term (``beta`` 0), a token whose IS ratio is 0 (masked by a ``*_mask`` mode) carries
        none; the ``*_truncate`` modes never give 0 (docs/algorithm.md, "Importance-sampling correction")."""
        mask = batch["completion_mask"] * batch.get("tool_mask", 1)
        if self._is_masks_tokens(batch):
            mask = mask * (batch["importance_sampling_ratio"] > 0)
        return mask

    def _is_masks_tokens(self, batch) -> bool:
        """Whether vLLM's importance-sampling ratio of ``batch`` can take a token out of every loss term."""
        correction = self.use_vllm and self.vllm_importance_sampling_correction
        return correction and batch.get("importance_sampling_ratio") is not None and self.beta == 0.0

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
        self.trainer.trust_region.end_step(args)
