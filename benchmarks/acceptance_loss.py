"""GBPO's loss on one fixed batch in bf16 on the run's device against the same batch in fp32 on the CPU.

The GPU acceptance (benchmarks/gpu_acceptance.py) reports it as ``loss_precision``; its CPU mode computes it too (bf16
on the CPU against fp32 on the CPU) so that CI runs the code.

    python benchmarks/acceptance_loss.py MODEL_DIR OUT.json [--device cuda|cpu] [--recipe RECIPE.yaml]

The batch (:func:`fixed_batch`, seeded, the same on every machine): 2 prompts x 4 completions = 8 rows of 16 prompt
and 32 completion tokens (ids drawn uniformly from the model's vocabulary above its 3 special ids); row ``i``'s
completion keeps its first ``32 - 3 i`` tokens (the rest is padding, masked), 172 loss tokens in all; rewards ``[1, 1,
0, 0]`` and ``[1, 0, 1, 0]``. The loss is GBPO's policy loss as `gbpo.loss` computes it for the trainer, without the
KL and entropy terms: ``gbpo_advantages`` (the recipe's ``scale_rewards``, ``target_baseline``, ``epsilon`` /
``epsilon_high``, ``gbpo_temperature``), ``target_ratio``, ``gbpo_per_token_loss`` (``tv_coef``), and the token mean
over the loss tokens (the reference's aggregation). The sampling policy's log-probs are the fp32 ones plus seeded
N(0, 0.1) noise, the same for both precisions, so the ratios are ~exp(+-0.1) and the loss is not zero.

- fp32 reference: the model loaded in float32 on the CPU, its plain forward, ``log_softmax`` of the whole logits
  (independent of TRL's kernel).
- bf16: the model loaded in bfloat16 on ``--device``, under ``torch.autocast(bfloat16)`` (what ``bf16: true`` and
  ``dtype: bfloat16`` give the trainer), log-probs through TRL's chunked head (``trl.trainer.utils.add_fused_lm_head``:
  the Triton kernel on a GPU, its torch fold on a CPU), as TRL's ``_get_per_token_logps_and_entropies`` calls it.

Reported: both losses, their relative difference ``|L_bf16 - L_fp32| / |L_fp32|``, the mean and largest absolute
log-prob difference over the loss tokens, and the rule the acceptance checks (``relative_difference <= 0.05``: bf16
moves a log-prob by ~1e-3 nats, and the loss by well under 1%; a broken kernel moves it by O(1)).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "qwen_math_aime.yaml"
GROUPS, GROUP_SIZE, PROMPT_TOKENS, COMPLETION_TOKENS = 2, 4, 16, 32
REWARDS = (1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0)
OLD_LOGP_NOISE = 0.1
LOSS_RTOL = 0.05


def fixed_batch(vocab_size: int, seed: int = 0) -> dict:
    """The batch of the module docstring: ``input_ids`` (8, 48), ``attention_mask`` (8, 48), ``completion_mask``
    (8, 32) and ``rewards`` (8,), on the CPU."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    rows = GROUPS * GROUP_SIZE
    input_ids = torch.randint(3, vocab_size, (rows, PROMPT_TOKENS + COMPLETION_TOKENS), generator=generator)
    lengths = torch.tensor([COMPLETION_TOKENS - 3 * i for i in range(rows)])
    completion_mask = (torch.arange(COMPLETION_TOKENS).unsqueeze(0) < lengths.unsqueeze(1)).long()
    attention_mask = torch.cat([torch.ones(rows, PROMPT_TOKENS, dtype=torch.long), completion_mask], 1)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "rewards": torch.tensor(REWARDS),
    }


def plain_logps(model, batch: dict):
    """(8, 32) fp32 log-probs of the completion tokens from the model's whole logits."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, -COMPLETION_TOKENS - 1 : -1].float()
    targets = batch["input_ids"][:, -COMPLETION_TOKENS:]
    return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def fused_logps(model, batch: dict, device: str):
    """(8, 32) fp32 log-probs on the CPU, computed on ``device`` under bf16 autocast through TRL's chunked head."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, temperature=1.0, outputs=("log_probs",))
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    labels = input_ids.masked_fill(attention_mask == 0, -100)  # as TRL: only the completion tokens are scored
    labels[:, :-COMPLETION_TOKENS] = -100
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    return out.log_probs[:, -COMPLETION_TOKENS:].float().cpu()


def loss_keys(recipe: Path = RECIPE) -> dict:
    """The recipe's GBPO loss keys, unset ones at GBPOConfig's defaults (``epsilon_high`` unset: ``epsilon``)."""
    from dataclasses import fields

    import yaml

    from gbpo.config import GBPOConfig

    keys = {f.name: f.default for f in fields(GBPOConfig)} | (yaml.safe_load(recipe.read_text()) or {})
    return {
        "scale_rewards": keys["scale_rewards"],
        "target_baseline": keys["target_baseline"],
        "epsilon_low": keys["epsilon"],
        "epsilon_high": keys["epsilon_high"] if keys["epsilon_high"] is not None else keys["epsilon"],
        "temperature": keys["gbpo_temperature"],
        "tv_coef": keys["tv_coef"],
    }


def gbpo_loss(logps, old_logps, batch: dict, keys: dict) -> float:
    """GBPO's policy loss (module docstring) of (8, 32) log-probs ``logps`` against ``old_logps``."""
    from gbpo.loss import gbpo_advantages, gbpo_per_token_loss, target_ratio

    advantages, targets = gbpo_advantages(
        batch["rewards"],
        GROUP_SIZE,
        scale_rewards=keys["scale_rewards"],
        target_baseline=keys["target_baseline"],
        epsilon_low=keys["epsilon_low"],
        epsilon_high=keys["epsilon_high"],
        temperature=keys["temperature"],
    )
    ratios = target_ratio(targets, keys["epsilon_low"], keys["epsilon_high"], keys["temperature"])
    per_token = gbpo_per_token_loss(logps, old_logps, advantages, ratios, tv_coef=keys["tv_coef"])
    mask = batch["completion_mask"].to(per_token.dtype)
    return float((per_token * mask).sum() / mask.sum())


def measure(model_dir: Path, device: str, recipe: Path = RECIPE) -> dict:
    """Both losses and their relative difference (module docstring), as one JSON-able dict."""
    import torch
    from transformers import AutoModelForCausalLM

    fp32 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = fixed_batch(fp32.config.vocab_size)
    reference = plain_logps(fp32, batch)
    del fp32
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(1)) * OLD_LOGP_NOISE
    old = reference + noise
    bf16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
    low = fused_logps(bf16, batch, device)
    del bf16
    keys = loss_keys(recipe)
    loss_fp32, loss_bf16 = gbpo_loss(reference, old, batch, keys), gbpo_loss(low, old, batch, keys)
    mask = batch["completion_mask"].bool()
    error = (low - reference)[mask].abs()
    relative = abs(loss_bf16 - loss_fp32) / abs(loss_fp32) if loss_fp32 else math.inf
    return {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU",
        "rows": int(mask.size(0)),
        "loss_tokens": int(mask.sum()),
        "loss_fp32_cpu": loss_fp32,
        "loss_bf16": loss_bf16,
        "relative_difference": relative,
        "logp_abs_error_mean": float(error.mean()),
        "logp_abs_error_max": float(error.max()),
        "rule": f"relative_difference <= {LOSS_RTOL:g}",
        "passed": math.isfinite(relative) and relative <= LOSS_RTOL,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--device", default="cpu", help="where the bf16 loss is computed: cuda or cpu")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="the GBPO loss keys' recipe")
    args = parser.parse_args(argv)
    result = measure(args.model_dir, args.device, args.recipe)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(ROOT))
    sys.exit(main())
