"""What one optimizer step does to the ratio in each precision: the trust region should see the policy's change, not
the rounding of the precision the log-probs are computed in (issue 36).

    python benchmarks/precision.py                       # the CPU default (SmolLM2-135M, recipes/smollm2_cpu.yaml)
    python benchmarks/precision.py --recipe recipes/qwen_math_aime.yaml --model DIR   # another recipe / model
    python benchmarks/precision.py --quick --model DIR   # tiny shapes: checks the script (CI)
    python benchmarks/precision.py --recipe recipes/qwen_math_aime.yaml --model DIR --prompts 1 \
        --max-completion-length 256    # on a GPU: what launch/gpu_acceptance.sh runs after its benchmark

With the trainer's own parts, on the device the recipe trains on (the CPU with ``use_cpu: true`` or without a GPU,
else the GPU; autocast on that device):

1. A GBPOTrainer built from the recipe as `gbpo.train` builds it (benchmarks/cpu.py's ``build_trainer``: TRL's
   parser, the batch layout, fp32 weights and fp32 training), without a vLLM engine.
2. A real generation batch: ``--prompts`` prompts of the recipe's data x ``num_generations`` completions (of at most
   ``--max-completion-length`` tokens, default the recipe's), sampled by
   the trainer's own ``_generate_and_score_completions`` (transformers generation at the recipe's temperature),
   with its rewards, GBPO advantages and target ratios.
3. The trainer's optimizer step on that batch: its optimizer (``create_optimizer``: AdamW at the recipe's
   ``learning_rate``, or ``--learning-rate``), ``_compute_loss`` on the whole batch at once (the same step as the
   recipe's gradient accumulation over it: the loss is the token mean over the step), gradient clipping at the
   recipe's ``max_grad_norm``, ``optimizer.step()``. This is Adam's first step: every weight moves by about
   ``lr * sign(grad)``.
4. Old and new log-probs of the completion tokens (before and after the step), both in the same precision, for each
   of: ``fp32``; ``bf16 autocast`` (fp32 weights under ``torch.autocast("cpu", torch.bfloat16)``, the CPU's bf16
   mode); ``bf16 weights`` (the model cast to bfloat16, the GPU recipes' ``dtype: bfloat16``); ``bf16 + fp32 head``
   (bf16 body, the LM head's matmul in fp32 on the fp32 weights, as TRL's ``cast_lm_head_to_fp32``); ``fp16
   autocast``. Per precision: ``rho = exp(logp_new - logp_old)`` over the loss tokens: mean ``|log rho|``, the
   fraction outside ``[1 - epsilon, 1 + epsilon_high]``, the smallest and largest ``rho``; ``rho`` with no update
   (old against old: exactly 1 if the computation is deterministic); and the precision's own error, mean
   ``|logp - logp_fp32|`` on the old weights.

Why it matters: bf16 keeps 8 bits of mantissa, so a weight w is rounded to steps of about ``2**-8 |w|``; an update of
``lr = 2e-6`` leaves most weights' bf16 value unchanged and flips a few by a whole step, so the policy the forward
pass sees moves by several times the update in random directions (docs/algorithm.md, "Precision and the trust
region"). The CPU model and its bf16 flags (and the GPU, where one is used) are printed with the table: bf16's
arithmetic is the same on every CPU, only its speed differs, so the figures do not depend on the machine (a GPU's
bf16 and fp16 matmuls may round their accumulations differently).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch
from cpu import build_trainer, cpu_info, say

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "bf16 autocast", "bf16 weights", "bf16 + fp32 head", "fp16 autocast")


def completion_logps(model, batch: dict, precision: str, fp32_head: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) log-probabilities of ``batch``'s completion tokens under ``model`` in ``precision``.

    ``model`` must already hold the precision's weights (fp32, or bf16 for the two "bf16 weights" modes); the
    autocast modes wrap the forward pass. The body's last hidden states are multiplied by the LM head's weight (in
    the model's precision, or by ``fp32_head``, the fp32 weight (V, H), in fp32 for "bf16 + fp32 head"): the body and
    the head are called directly, since the trainer patches the model's own ``forward`` with TRL's fused head, which a
    copy of the model would still run on the original weights. Log-softmax is in fp32 for every mode.
    """
    prompt, completion = batch["prompt_ids"], batch["completion_ids"]
    input_ids = torch.cat([prompt, completion], 1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    length = completion.size(1)
    cast = {"bf16 autocast": torch.bfloat16, "fp16 autocast": torch.float16}.get(precision)
    context = torch.autocast(input_ids.device.type, dtype=cast) if cast is not None else nullcontext()
    with torch.no_grad(), context:
        hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention).last_hidden_state
        head = fp32_head if precision == "bf16 + fp32 head" else model.get_output_embeddings().weight
        logits = hidden[:, -length - 1 : -1].to(head.dtype) @ head.T
    return torch.log_softmax(logits.float(), -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)


def ratio_figures(new: torch.Tensor, old: torch.Tensor, mask: torch.Tensor, eps_low: float, eps_high: float) -> dict:
    """Mean |log rho|, fraction of loss tokens outside [1 - eps_low, 1 + eps_high], smallest and largest rho."""
    log_rho = (new - old)[mask.bool()]
    rho = log_rho.exp()
    return {
        "mean_abs_log_rho": log_rho.abs().mean().item(),
        "outside_bounds": ((rho < 1 - eps_low) | (rho > 1 + eps_high)).float().mean().item(),
        "rho_min": rho.min().item(),
        "rho_max": rho.max().item(),
    }


def models_in(precision: str, model) -> object:
    """The model in the weights ``precision`` needs: a bf16 copy for the two "bf16 weights" modes, else ``model``."""
    if precision in ("bf16 weights", "bf16 + fp32 head"):
        return copy.deepcopy(model).to(torch.bfloat16)
    return model


def measure(args) -> dict:
    """Steps 1-4 of the module docstring; returns the JSON report."""
    torch.manual_seed(args.seed)
    extra = [] if args.max_completion_length is None else ["--max_completion_length", str(args.max_completion_length)]
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(Path(args.recipe), args.model, "fp32", out, extra)
    trainer.use_vllm = False  # transformers generates: no engine was built; no sampler mismatch to correct
    model = trainer.model
    model.train()
    trainer.args.gradient_accumulation_steps = 1  # the whole generation batch is one optimizer step (module doc)
    trainer.current_gradient_accumulation_steps = 1
    g = trainer.num_generations
    rows = [trainer.train_dataset[i % len(trainer.train_dataset)] for i in range(args.prompts) for _ in range(g)]
    say(f"Generating {len(rows)} completions ({args.prompts} prompts x {g}) with the trainer ...")
    batch = trainer._generate_and_score_completions(rows)
    mask = batch["completion_mask"] * batch.get("tool_mask", 1)
    old_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if args.learning_rate is not None:
        trainer.args.learning_rate = args.learning_rate
    optimizer = trainer.create_optimizer()
    loss = trainer._compute_loss(model, batch)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm).item()
    optimizer.step()
    optimizer.zero_grad()
    new_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    moved = sum(int((new_state[k] != old_state[k]).sum()) for k in old_state)
    model.eval()
    results = {
        "cpu": cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "cpu",
        "recipe": args.recipe,
        "model": args.model,
        "rows": len(rows),
        "loss_tokens": int(mask.sum()),
        "learning_rate": trainer.args.learning_rate,
        "max_grad_norm": trainer.args.max_grad_norm,
        "grad_norm": grad_norm,
        "weights_moved": moved,
        "epsilon_low": trainer.epsilon_low,
        "epsilon_high": trainer.epsilon_high,
        "precisions": {},
    }
    head_name = next(n for n, p in model.named_parameters() if p is model.get_output_embeddings().weight)
    logps: dict[str, dict[str, torch.Tensor]] = {}
    for precision in args.precisions:
        say(f"{precision}: old and new log-probs ...")
        per_state = {}
        for name, state in (("old", old_state), ("new", new_state)):
            model.load_state_dict(state)
            head = state[head_name].float()
            m = models_in(precision, model)
            per_state[name] = completion_logps(m, batch, precision, head)
            if name == "old":
                per_state["old again"] = completion_logps(m, batch, precision, head)
        logps[precision] = per_state
        figures = ratio_figures(per_state["new"], per_state["old"], mask, trainer.epsilon_low, trainer.epsilon_high)
        figures["no_update_max_abs_log_rho"] = (
            (per_state["old again"] - per_state["old"])[mask.bool()].abs().max().item()
        )
        if "fp32" in logps:
            error = (per_state["old"] - logps["fp32"]["old"])[mask.bool()].abs().mean().item()
            figures["logp_error_vs_fp32"] = error
        results["precisions"][precision] = figures
    return results


def table(results: dict) -> str:
    cpu = results["cpu"]
    lines = [
        f"CPU: {cpu['model_name']} (avx512_bf16: {cpu['avx512_bf16']}, amx_bf16: {cpu['amx_bf16']}), "
        f"{results['torch_threads']} torch threads; log-probs on {results.get('device', 'cpu')}",
        f"{results['recipe']} on {results['model']}: {results['rows']} completions, {results['loss_tokens']} loss "
        f"tokens; one AdamW step at lr {results['learning_rate']:g} (grad norm {results['grad_norm']:.3g} before "
        f"clipping at {results['max_grad_norm']:g}; {results['weights_moved']} weights moved); bounds "
        f"[{1 - results['epsilon_low']:g}, {1 + results['epsilon_high']:g}]",
        "",
        "| precision of both passes | mean abs log rho | tokens outside bounds | smallest / largest rho | "
        "max abs log rho without update | logp error vs fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in results["precisions"].items():
        error = f.get("logp_error_vs_fp32")
        lines.append(
            f"| {name} | {f['mean_abs_log_rho']:.3g} | {f['outside_bounds'] * 100:.1f}% | {f['rho_min']:.3g} / "
            f"{f['rho_max']:.3g} | {f['no_update_max_abs_log_rho']:.1e} | "
            f"{'-' if error is None else f'{error:.3g}'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "smollm2_cpu.yaml"))
    parser.add_argument("--model", default="smollm2-135m", help="short id, directory or hub id (default smollm2-135m)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts of the batch (default 2; --quick 1)")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--max-completion-length", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help=f"comma-separated, of {PRECISIONS}")
    parser.add_argument("--quick", action="store_true", help="one prompt (the model's size is --model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    args.prompts = args.prompts or (1 if args.quick else 2)
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = [p for p in args.precisions if p not in PRECISIONS]
    if unknown:
        parser.error(f"--precisions: unknown {unknown}; known: {', '.join(PRECISIONS)}")
    if args.precisions[0] != "fp32" and "fp32" in args.precisions:
        args.precisions.remove("fp32")
        args.precisions.insert(0, "fp32")  # first: the others' log-prob error is measured against it
    results = measure(args)
    print(table(results))
    if args.output:
        args.output.write_text(json.dumps(results, indent=1) + "\n")
    bad = [n for n, f in results["precisions"].items() if not math.isfinite(f["mean_abs_log_rho"])]
    if bad:
        raise SystemExit(f"non-finite ratios in {bad}")
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
