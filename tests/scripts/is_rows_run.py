"""Vote-N/train-M and dynamic sampling with vLLM's importance-sampling (IS) correction, on vLLM for CPU.

    python tests/scripts/is_rows_run.py OUT.json MODEL_DIR

Builds a `GBPOTrainer` (vLLM colocated, IS correction on, 4 votes / 2 trained, uninformative groups dropped) on the
tiny model and records, for tests/test_is_rows.py:

* ``old_pass_rows``: the rows of every old log-prob pass while one generation batch of 8 rows (2 groups) is made;
  the logged IS-ratio mean and the mean over the kept rows' IS ratios.
* ``positions``: a first round of long unanimous prompts (dropped) refilled by a round of short prompts, so the kept
  rows were left-padded after their round's old log-probs: the largest difference between the batch's old log-probs
  and a pass of the same model on the batch as it will be trained.
* ``modes``: per IS mode, with the sampling log-probs 0.03 nats low plus seeded N(0, 0.1) noise per token, over
  completions of up to 128 tokens: the kept rows, how many the mode masks (IS ratio 0 on all loss tokens), the
  ratio's range, and GBPO's loss on the batch against its loss on the batch without the masked rows.
"""

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOTrainer

from gbpo import GBPOConfig, GBPOTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny.py
from tiny import CPU_RUN  # noqa: E402

out_path, model_dir = Path(sys.argv[1]), sys.argv[2]


def vote_reward(prompts, completions, **kwargs):
    """0 for the "same" prompts (unanimous groups, dropped), a content hash for the "vary" ones."""
    return [
        0.0 if "same" in p[-1]["content"] else float(sum(map(ord, c[-1]["content"])) % 97)
        for p, c in zip(prompts, completions, strict=True)
    ]


def prompt(text):
    return {"prompt": [{"role": "user", "content": text}]}


args = GBPOConfig(
    output_dir=str(out_path.parent / "run"),
    per_device_train_batch_size=4,  # x 2 steps per generation: 8 rows, 2 groups of 4 votes
    steps_per_generation=2,
    gradient_accumulation_steps=2,
    num_iterations=2,
    num_generations=4,
    num_train_generations=2,
    drop_uninformative_groups=True,
    max_extra_generation_rounds=3,
    max_completion_length=128,
    beta=0.0,
    use_vllm=True,
    vllm_mode="colocate",
    vllm_dtype="float32",
    vllm_importance_sampling_correction=True,
    **CPU_RUN,
)
trainer = GBPOTrainer(
    model=AutoModelForCausalLM.from_pretrained(model_dir),
    reward_funcs=vote_reward,
    args=args,
    train_dataset=Dataset.from_list([prompt(f"vary {i}") for i in range(4)]),  # the refill rounds' short prompts
    processing_class=AutoTokenizer.from_pretrained(model_dir),
)
trainer.model.train()
trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); the loss reads it
record = {}

# --- which rows the old log-prob pass sees
passes = []
original = GRPOTrainer._get_per_token_logps_and_entropies


def counting(self, model, input_ids, *a, **kw):
    if not torch.is_grad_enabled():
        passes.append(input_ids.size(0))
    return original(self, model, input_ids, *a, **kw)


GRPOTrainer._get_per_token_logps_and_entropies = counting
torch.manual_seed(0)
batch = trainer._generate_and_score_completions([prompt("vary a")] * 4 + [prompt("vary b")] * 4)
GRPOTrainer._get_per_token_logps_and_entropies = original
kept = batch["completion_mask"].sum(1) > 0  # the kept rows (filler rows have no loss tokens)
record["old_pass_rows"] = passes
record["kept_rows"] = int(kept.sum())
record["old_logps_finite"] = bool(batch["old_per_token_logps"].isfinite().all())
record["logged_is_mean"] = trainer._metrics["train"]["sampling/importance_sampling_ratio/mean"][-1]
record["kept_is_mean"] = batch["importance_sampling_ratio"][kept].mean().item()


# --- positions after a refill round
def training_pass(batch):
    """The old log-probs of ``batch`` as the training forward pass places its tokens (TRL's own pass)."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    with torch.no_grad():
        return original(trainer, trainer.model, ids, mask, batch["completion_ids"].size(1), batch_size=4)[0]


torch.manual_seed(0)
batch = trainer._generate_and_score_completions([prompt("same " + "x" * 40)] * 8)
loss_tokens = batch["completion_mask"].bool()
record["positions"] = {
    "extra_rounds": trainer._metrics["train"]["rows/extra_generation_rounds"][-1],
    "prompt_width": batch["prompt_ids"].size(1),
    "kept_prompt_tokens": batch["prompt_mask"][batch["completion_mask"].sum(1) > 0].sum(1).tolist(),
    "max_abs_difference": (batch["old_per_token_logps"] - training_pass(batch))[loss_tokens].abs().max().item(),
}

# --- IS modes over long completions with mismatched sampling log-probs
generate = trainer._generate


def mismatched(prompts):
    result = list(generate(prompts))
    noise = torch.Generator().manual_seed(1234)
    # vLLM's log-prob of each token 0.03 nats low, plus N(0, 0.1) noise: a small per-token mismatch that a
    # per-sequence ratio multiplies over the completion's length
    result[4] = [[lp - 0.03 + 0.1 * torch.randn(1, generator=noise).item() for lp in row] for row in result[4]]
    return tuple(result)


trainer._generate = mismatched
record["modes"] = {}
for mode, clip_min in (("sequence_mask", None), ("token_truncate", None), ("sequence_truncate", 0.5)):
    trainer.vllm_importance_sampling_mode, trainer.vllm_importance_sampling_clip_min = mode, clip_min
    torch.manual_seed(2)
    batch = trainer._generate_and_score_completions([prompt("vary a")] * 4 + [prompt("vary b")] * 4)
    ratio = batch["importance_sampling_ratio"].expand_as(batch["completion_mask"])
    loss_tokens = batch["completion_mask"].bool()
    weighted = (ratio > 0) & loss_tokens
    kept = loss_tokens.any(1)
    masked_rows = kept & ~weighted.any(1)
    unmasked = ~masked_rows
    alone = {k: (v[unmasked] if v.dim() > 0 else v) for k, v in batch.items()}
    alone["num_items_in_batch"] = alone["completion_mask"].sum()  # the count of a batch given only those rows
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, batch).item()
        loss_alone = trainer._compute_loss(trainer.model, alone).item()
    record["modes"][mode] = {
        "kept_rows": int(kept.sum()),
        "masked_rows": int(masked_rows.sum()),
        "masked_tokens": int((loss_tokens & ~weighted).sum()),
        "loss_tokens": int(loss_tokens.sum()),
        "completion_lengths": batch["completion_mask"].sum(1).tolist(),
        "ratio_min": ratio[loss_tokens].min().item(),
        "ratio_max": ratio[loss_tokens].max().item(),
        "loss": loss,
        "loss_without_masked_rows": loss_alone,
    }
out_path.write_text(json.dumps(record, indent=1))
