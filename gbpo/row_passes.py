"""The log-prob passes of a generation batch whose rows are dropped (vote-N/train-M, dynamic sampling).

A mixin of `gbpo.trainer.GBPOTrainer`. While a generation round may still lose rows (`gbpo.rows`), TRL's old and
reference log-prob passes that its method does not itself use are deferred and run afterwards on the kept rows
(`_run_deferred_logps`). With vLLM's importance-sampling correction TRL needs the old log-probs inside its method;
they are then computed on vote-N/train-M's trained rows only.
"""

from __future__ import annotations

import math

import torch
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from .rows import trained_mask

__all__ = ["RowPassesMixin"]


class RowPassesMixin:
    """Deferred and row-restricted log-prob passes of `GBPOTrainer` (see the module docstring)."""

    def _generate_round(self, inputs, num_generations, num_trained):
        """One generation round with the deferrable log-prob passes deferred; its rows' trained/informative masks.

        With vLLM's importance-sampling correction the old log-probs are computed here (TRL's IS ratio needs them), on
        the trained rows of vote-N/train-M only; TRL's IS-ratio metrics are then re-logged over those rows."""
        world = len(inputs) * self.accelerator.num_processes
        start = self.accelerator.process_index * len(inputs)
        candidates = trained_mask(world, num_generations, num_trained)[start : start + len(inputs)]
        self._deferred, self._round_candidates = [], candidates
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            deferred, self._deferred = self._deferred, None
        if "computed" in deferred and not candidates.all():
            self._relog_importance_sampling(output, candidates)
        output, trained, informative, rewards = self._score_round(output, num_generations, num_trained)
        return output, trained, informative, deferred, rewards

    def _extra_prompts(self, num_rows, round_index):
        """This process's rows of an extra generation round: fresh prompts, the same on every process (seeded)."""
        dataset = self.train_dataset
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError("max_extra_generation_rounds needs a map-style train_dataset (an indexable Dataset).")
        num_generations = self.num_generations
        num_prompts = num_rows * self.accelerator.num_processes // num_generations
        generator = torch.Generator().manual_seed(self.args.seed + 1_000_003 * self.state.global_step + round_index)
        prompts = torch.randint(len(dataset), (num_prompts,), generator=generator).repeat_interleave(num_generations)
        start = self.accelerator.process_index * num_rows
        return [dataset[int(i)] for i in prompts[start : start + num_rows]]

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *a, **kw):
        # While rows may still be dropped (`_generate_round`), TRL's old/reference log-prob passes that its method does
        # not use itself return a placeholder and are recorded; `_run_deferred_logps` runs them on the kept rows.
        deferred = getattr(self, "_deferred", None)
        if deferred is not None:
            generate_every = self.args.steps_per_generation * self.num_iterations
            vllm_is = self.use_vllm and self.vllm_importance_sampling_correction
            # TRL's order and conditions: old log-probs, then the reference's.
            plan = ["old"] * (self.args.gradient_accumulation_steps % generate_every != 0 or vllm_is)
            plan += ["ref"] * (self.beta != 0.0)
            name = plan[len(deferred)] if len(deferred) < len(plan) else None
            if name == "ref" or (name == "old" and not vllm_is):  # vLLM's IS ratio needs the old ones inside TRL
                deferred.append(name)
                return input_ids.new_zeros(input_ids.size(0), logits_to_keep, dtype=torch.float32), None, None
            deferred.append("computed")
            rows = self._round_candidates.nonzero().flatten().to(input_ids.device)
            if rows.numel() < input_ids.size(0) and all(v is None for k, v in kw.items() if k != "batch_size"):
                # Only vote-N/train-M's trained rows can be trained: the rows that only voted get NaN, which TRL's IS
                # ratio reads as no correction and its log-prob-difference metrics leave out (`_generate_round`).
                logps = super()._get_per_token_logps_and_entropies(
                    model, input_ids[rows], attention_mask[rows], logits_to_keep, *a, **kw
                )[0]
                full = logps.new_full((input_ids.size(0), logps.size(1)), math.nan)
                full[rows] = logps
                return full, None, None
        return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, *a, **kw)

    def _run_deferred_logps(self, output, deferred):
        """The old/reference log-prob passes deferred by `_get_per_token_logps_and_entropies`, on the kept rows."""
        if not any(name in ("old", "ref") for name in deferred):
            return
        # The inputs and attention mask of the training forward pass (`_compute_loss`).
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        logits_to_keep = output["completion_ids"].size(1)
        batch_size = self.args.per_device_train_batch_size
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if "old" in deferred:
                output["old_per_token_logps"] = super()._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size
                )[0]
            if "ref" in deferred:
                if self.ref_model is not None:
                    ref = super()._get_per_token_logps_and_entropies(
                        self.ref_model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size
                    )[0]
                else:  # PEFT: the reference is the base model (or an adapter named "ref"), as in TRL
                    unwrapped = self.accelerator.unwrap_model(self.model)
                    with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                        ref = super()._get_per_token_logps_and_entropies(
                            self.model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size
                        )[0]
                output["ref_per_token_logps"] = ref
