"""Which generated rows enter the training batch: vote-N/train-M, informative groups, even splits over processes.

TTRL votes with ``N = num_generations`` completions per prompt and trains on ``M = num_train_generations`` of them
(its reference: 64 votes, 32 trained). A group whose ``M`` trained advantages are all zero (a unanimous vote) carries
no policy gradient. The functions here decide, as pure tensor functions, which rows of a generation batch the trainer
keeps; `gbpo.trainer.GBPOTrainer` removes the others before the old/reference log-prob passes and the training
forward and backward passes, so they cost nothing there.

Rules (all deterministic and independent of the completions and rewards, so the trained rows of a group are an
unbiased sample of its ``N`` i.i.d. completions):

* **Which M of the N are trained** (:func:`trained_mask`): position ``j`` (0-based) of a group is trained iff
  ``(j * M) mod N < M``: evenly spaced, starting with the first; for ``M`` dividing ``N``, every ``(N/M)``-th completion
  (64/32: the even positions). Over any run of ``L`` consecutive rows with ``L * M`` divisible by ``N`` exactly
  ``L * M / N`` are trained, so when ``per_device_train_batch_size * M`` is divisible by ``N`` every process keeps the
  same number of rows even when a group spans processes (TRL's layout puts the rows of a group consecutively over
  the processes' generation batches).
* **Informative groups** (:func:`informative_rows`): a group is informative when one of its trained rows has
  ``|advantage| > ADVANTAGE_ATOL``; the others carry no policy gradient.
* **Equal rows on every process** (:func:`rows_per_process`): the kept rows per process are the largest
  informative count over the processes, rounded up to a multiple of ``steps_per_generation`` (at least one row per
  micro-batch) and at most the vote-N/train-M batch. A process with fewer informative rows fills up with *filler*
  rows (:func:`select_rows`) whose completion mask is zeroed and which the trainer marks (``in_loss``): they are in
  GBPO's forward pass but in no loss term or token count, and TRL's losses are computed without them (their sequence
  means count rows). In data-parallel training a step waits for the slowest process, so filler costs compute, not
  time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "ADVANTAGE_ATOL",
    "batch_layout",
    "concat_rows",
    "informative_rows",
    "rows_per_process",
    "select_rows",
    "take_rows",
    "trained_mask",
]

# |advantage| at or below this counts as zero (a group of equal rewards: TRL's and GBPO's advantages are exactly 0,
# or a float rounding error of ``R - mean(R)`` with scale_rewards="none").
ADVANTAGE_ATOL = 1e-6

# Per-row tensors of TRL's `_generate_and_score_completions` output, with the side and value they are padded with.
# Prompt tensors are left-padded, completion tensors right-padded (as TRL pads them).
_LEFT_PADDED = {"prompt_ids": "pad", "prompt_mask": 0}
_RIGHT_PADDED = {
    "completion_ids": "pad",
    "completion_mask": 0,
    "tool_mask": 1,
    "old_per_token_logps": 0.0,
    "ref_per_token_logps": 0.0,
    "sampling_per_token_logps": 0.0,
    "importance_sampling_ratio": 1.0,
}
_PER_ROW = ("advantages", "target_ratios")
_SCALARS = ("num_items_in_batch",)


def trained_mask(num_rows: int, num_generations: int, num_train_generations: int) -> torch.Tensor:
    """Which rows of a batch of groups are trained on (vote-N/train-M).

    Args:
        num_rows: rows in the batch, a multiple of ``num_generations`` (the groups' rows consecutive).
        num_generations: ``N``, completions per prompt (all of them vote).
        num_train_generations: ``M`` in ``[1, N]``, completions per prompt trained on.

    Returns:
        (num_rows,) bool tensor: row ``g * N + j`` is trained iff ``(j * M) mod N < M`` (module docstring).

    Raises:
        ValueError: ``num_rows`` is not a multiple of ``N`` or ``M`` is not in ``[1, N]``.
    """
    if not 1 <= num_train_generations <= num_generations:
        raise ValueError(f"num_train_generations must be in [1, {num_generations}], got {num_train_generations}.")
    if num_rows % num_generations:
        raise ValueError(f"{num_rows} rows do not form whole groups of num_generations={num_generations}.")
    position = torch.arange(num_generations)
    group = (position * num_train_generations) % num_generations < num_train_generations
    return group.repeat(num_rows // num_generations)


def informative_rows(
    advantages: torch.Tensor, trained: torch.Tensor, num_generations: int, atol: float = ADVANTAGE_ATOL
) -> torch.Tensor:
    """Rows whose group carries a policy gradient: some trained row of the group has ``|advantage| > atol``.

    Args:
        advantages: (R,) float, the advantages of a batch of whole groups (the groups' rows consecutive).
        trained: (R,) bool, the rows trained on (:func:`trained_mask`); the others do not count.
        num_generations: ``N``, the group size.
        atol: the advantage magnitude counted as zero.

    Returns:
        (R,) bool: True on every row (trained or not) of an informative group.
    """
    carries = (advantages.abs() > atol) & trained.to(advantages.device)
    return carries.view(-1, num_generations).any(dim=1).repeat_interleave(num_generations)


def rows_per_process(informative_counts: Sequence[int] | torch.Tensor, cap: int, steps_per_generation: int) -> int:
    """Rows every process keeps, so that each holds the same number and ``steps_per_generation`` splits are even.

    Args:
        informative_counts: kept-worthy (informative, trained) rows on each process.
        cap: rows per process of the full vote-N/train-M batch (``per_device_train_batch_size *
            steps_per_generation * M / N``), a multiple of ``steps_per_generation``.
        steps_per_generation: micro-batches per generation batch.

    Returns:
        ``min(cap, max(steps, ceil(max(counts) / steps) * steps))``: no process drops an informative row unless it has
        more than ``cap``, and every micro-batch holds at least one row.
    """
    if cap % steps_per_generation:
        raise ValueError(f"cap={cap} rows do not split into steps_per_generation={steps_per_generation} micro-batches.")
    most = int(max(int(c) for c in informative_counts))
    rounded = math.ceil(most / steps_per_generation) * steps_per_generation
    return min(cap, max(steps_per_generation, rounded))


def select_rows(
    candidates: torch.Tensor, informative: torch.Tensor, num_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``num_rows`` rows of one process's batch: informative candidates first, then filler.

    Args:
        candidates: (B,) bool, the rows vote-N/train-M trains on.
        informative: (B,) bool, rows of informative groups (all True when groups are not filtered).
        num_rows: rows to return (:func:`rows_per_process`).

    Returns:
        ``(index, in_loss)``: (num_rows,) long indices into the batch, in batch order within each kind, and (num_rows,)
        bool, True for a kept row and False for a filler row (to be masked out of every loss term). Kept rows are the
        first ``num_rows`` informative candidates; filler rows are the first remaining candidates, then the first
        rows that only voted.

    Raises:
        ValueError: the batch has fewer than ``num_rows`` rows.
    """
    if num_rows > candidates.numel():
        raise ValueError(f"cannot keep {num_rows} rows of a batch of {candidates.numel()}.")
    candidates, informative = candidates.bool().cpu(), informative.bool().cpu()
    keep = (candidates & informative).nonzero().flatten()[:num_rows]
    taken = torch.zeros_like(candidates)
    taken[keep] = True
    filler = torch.cat([(candidates & ~taken).nonzero().flatten(), (~candidates).nonzero().flatten()])
    filler = filler[: num_rows - keep.numel()]
    index = torch.cat([keep, filler])
    in_loss = torch.cat([torch.ones(keep.numel(), dtype=torch.bool), torch.zeros(filler.numel(), dtype=torch.bool)])
    order = index.argsort()  # batch order, so the rows stay grouped as generated
    return index[order], in_loss[order]


def _check_keys(batch: dict) -> None:
    known = set(_LEFT_PADDED) | set(_RIGHT_PADDED) | set(_PER_ROW) | set(_SCALARS)
    unknown = sorted(key for key, value in batch.items() if value is not None and key not in known)
    if unknown:
        raise ValueError(
            f"Dropping rows (num_train_generations < num_generations, drop_uninformative_groups) does not support the "
            f"batch keys {unknown} (image or multimodal inputs); train on every row (num_train_generations=None, "
            "drop_uninformative_groups=False) for such data."
        )


def _pad_value(value, pad_token_id: int):
    return pad_token_id if value == "pad" else value


def take_rows(batch: dict, index: torch.Tensor, pad_token_id: int, *, trim_prompt: bool) -> dict:
    """The rows ``index`` of a TRL generation batch, with the padding columns no kept row needs removed.

    Completion columns past every kept row's last token (``completion_mask`` 0 and ``completion_ids`` the pad token
    on every kept row) are cut, as a batch of only the kept rows would be padded; with ``trim_prompt`` leading prompt
    columns that are padding on every kept row are cut too (leave it False when log-probs were already computed on
    the wider batch: the absolute positions of a left-padded prompt change with its padding).

    Args:
        batch: TRL's `_generate_and_score_completions` output (``prompt_ids`` (B, P), ``completion_ids`` (B, C), ...).
        index: (K,) long, rows to keep.
        pad_token_id: the tokenizer's pad token.
        trim_prompt: also cut all-padding prompt columns.

    Returns:
        A new dict with the same keys; ``num_items_in_batch`` is left as it was (the caller recounts it).

    Raises:
        ValueError: the batch has a key this function does not know how to slice (images, multimodal inputs).
    """
    _check_keys(batch)
    index = index.to(batch["completion_ids"].device)
    out = {key: (value[index] if key not in _SCALARS and value is not None else value) for key, value in batch.items()}
    mask = out["completion_mask"].bool() | (out["completion_ids"] != pad_token_id)
    width = int(mask.any(dim=0).nonzero().max()) + 1 if mask.any() else 1
    for key in _RIGHT_PADDED:
        if out.get(key) is not None and out[key].dim() == 2 and out[key].size(1) == batch["completion_ids"].size(1):
            out[key] = out[key][:, :width]
    if trim_prompt:
        used = out["prompt_mask"].bool().any(dim=0)
        start = int(used.nonzero().min()) if used.any() else out["prompt_mask"].size(1) - 1
        out["prompt_ids"], out["prompt_mask"] = out["prompt_ids"][:, start:], out["prompt_mask"][:, start:]
    return out


def concat_rows(batches: Sequence[dict], pad_token_id: int) -> dict:
    """Concatenate generation batches (the rounds of dynamic sampling) row-wise, padding to common widths.

    Prompt tensors are left-padded and completion tensors right-padded to the widest batch, with the values TRL pads
    them with (``tool_mask`` with 1, log-probs with 0, importance-sampling ratios with 1).

    Args:
        batches: TRL `_generate_and_score_completions` outputs with the same keys.
        pad_token_id: the tokenizer's pad token.

    Returns:
        One dict; ``num_items_in_batch`` is the sum of the batches' (the caller recounts it after selection).
    """
    if len(batches) == 1:
        return dict(batches[0])
    for batch in batches:
        _check_keys(batch)
    out = {}
    for key, value in batches[0].items():
        values = [batch[key] for batch in batches]
        if value is None:
            out[key] = None
        elif key in _SCALARS:
            out[key] = sum(values)
        elif key in _PER_ROW or value.dim() == 1 or (key == "importance_sampling_ratio" and value.size(1) == 1):
            out[key] = torch.cat(values)  # per-row values, or sequence-level importance-sampling ratios (B, 1)
        else:
            left = key in _LEFT_PADDED
            fill = _pad_value((_LEFT_PADDED if left else _RIGHT_PADDED)[key], pad_token_id)
            width = max(v.size(1) for v in values)
            padded = []
            for v in values:
                pad = v.new_full((v.size(0), width - v.size(1)), fill)
                padded.append(torch.cat([pad, v] if left else [v, pad], dim=1))
            out[key] = torch.cat(padded)
    return out


def batch_layout(args, num_processes: int, num_prompts: int) -> dict[str, int]:
    """The batch layout a `GBPOConfig` gives on ``num_processes`` processes and a data set of ``num_prompts``.

    TRL generates ``per_device_train_batch_size * steps_per_generation`` completions per process per generation,
    reuses them ``num_iterations`` times, and drops a last incomplete generation batch of each epoch (its
    ``RepeatSampler``); every ``gradient_accumulation_steps`` micro-batches make one optimizer step.

    Returns:
        ``votes_per_prompt`` (N), ``trained_per_prompt`` (M), ``prompts_per_generation``, ``prompts_per_step`` (the
        prompts whose trained completions form one optimizer step's mini-batch), ``steps_per_ppo_epoch`` (optimizer
        steps per pass over a generation batch), ``steps_per_generation_batch`` (all ``num_iterations`` passes) and
        ``total_steps`` (optimizer steps of ``num_train_epochs`` passes, or ``max_steps`` when set).
    """
    votes = args.num_generations
    trained = args.num_train_generations or votes
    generated = args.per_device_train_batch_size * args.steps_per_generation * num_processes
    prompts_per_generation = generated // votes
    micro_per_generation = args.steps_per_generation * args.num_iterations
    trained_per_micro_batch = args.per_device_train_batch_size * trained // votes
    rows_per_step = trained_per_micro_batch * num_processes * args.gradient_accumulation_steps
    steps_per_generation_batch = micro_per_generation // args.gradient_accumulation_steps
    generations_per_epoch = num_prompts // prompts_per_generation
    total = (
        args.max_steps
        if args.max_steps > 0
        else int(args.num_train_epochs * generations_per_epoch * steps_per_generation_batch)
    )
    return {
        "votes_per_prompt": votes,
        "trained_per_prompt": trained,
        "prompts_per_generation": prompts_per_generation,
        "prompts_per_step": rows_per_step // trained,
        "steps_per_ppo_epoch": args.steps_per_generation // args.gradient_accumulation_steps,
        "steps_per_generation_batch": steps_per_generation_batch,
        "total_steps": total,
    }
