"""Benchmark evaluation: avg@n, unbiased pass@k and maj@k of a model, with a report and a plot.

``python -m gbpo.evaluate --model PATH_OR_ID --benchmarks aime24,amc,math500`` samples ``--num-samples`` completions per
problem (default 16 at T=0.6, top_p=0.95, 3072 new tokens: the TTRL paper's protocol), grades them with
:mod:`gbpo.grading` and writes to ``--output-dir``:

* ``results.json`` -- the run config, and per benchmark its metrics and one record per problem (prompt, gold answer,
  samples, extracted answers, correctness, the majority vote for each k);
* ``summary.md`` -- a markdown table per benchmark: avg@n with its 95% interval, pass@k and maj@k for each k, and the
  published reference numbers when the model is one :data:`REFERENCES` knows;
* ``pass_at_k.png`` -- pass@k (solid) and maj@k (dashed) against k (log2 axis), one panel per benchmark.

``python -m gbpo.evaluate --compare DIR1 DIR2 ... --output-dir OUT`` renders the table and the plot of earlier runs
side by side (one row and one line per run, labelled by directory name).

Metrics (all fractions in [0, 1]; the report prints percentages):

* ``avg@n`` -- the mean over problems of the fraction of the n samples that are correct (``pass@1`` is the same
  number). Its 95% interval is the normal approximation over problems: mean +- 1.96 * s / sqrt(P), with ``s`` the
  sample standard deviation (ddof=1) of the P per-problem accuracies (a half-width of 0 when P = 1).
* ``pass@k`` -- the unbiased estimator of Chen et al. 2021 (:func:`pass_at_k`) from all n samples, averaged.
* ``maj@k`` -- a problem counts as solved when the majority vote (:func:`gbpo.grading.majority_vote`; ties go to the
  answer seen first) over its *first* k samples is equivalent to the gold answer (:func:`maj_at_k`), averaged.

k runs over 1, 2, 4, ... up to n, and n itself (or ``--ks``). Generation uses vLLM when it is installed and a GPU is
present, else batched ``transformers`` generation; prompts are the training template (:func:`gbpo.data.load_benchmark`
rendered with the tokenizer's chat template). The trainer can call :func:`evaluate` on its live model.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .data import BENCHMARKS, INSTRUCTION, load_benchmark
from .grading import Vote, answers_equivalent, extract_answer, majority_vote

__all__ = [
    "REFERENCES",
    "compare",
    "compute_metrics",
    "default_ks",
    "evaluate",
    "load_model",
    "load_results",
    "main",
    "maj_at_k",
    "mean_ci95",
    "pass_at_k",
    "plot_pass_at_k",
    "reference_rows",
    "render_summary",
    "write_outputs",
]

logger = logging.getLogger(__name__)

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
RESULTS_FILE, SUMMARY_FILE, PLOT_FILE = "results.json", "summary.md", "pass_at_k.png"

# ---------------------------------------------------------------------------------------------------- references

REFERENCES: list[dict[str, Any]] = [
    {
        "match": "qwen2.5-math-1.5b",
        "exclude": ("instruct",),
        "source": "TTRL paper v2, avg@16, T=0.6, top_p 0.95, 3072 tokens",
        "num_samples": 16,
        "rows": {
            "Qwen2.5-Math-1.5B base": {"aime24": 7.7, "amc": 28.6, "math500": 32.7},
            "Qwen2.5-Math-1.5B after TTRL": {"aime24": 15.8, "amc": 48.9, "math500": 73.0},
        },
    },
]
"""Published pass@1 numbers (percent) keyed by a lower-case substring of the model id or path (``match``), unless the
id also contains one of ``exclude``; ``rows`` maps a row label to ``{benchmark: pass@1 in percent}``."""


def reference_rows(model_id: str | None) -> list[tuple[str, dict[str, float], int]]:
    """The published reference rows for a model id or path, ``[]`` when none applies.

    Args:
        model_id: a hub id, short id or path (matched case-insensitively against :data:`REFERENCES`); None gives ``[]``.

    Returns:
        ``[(label, {benchmark: pass@1 in percent}, num_samples), ...]``; each label ends with the source in
        parentheses.
    """
    if not model_id:
        return []
    name = model_id.lower()
    rows = []
    for ref in REFERENCES:
        if ref["match"] in name and not any(x in name for x in ref.get("exclude", ())):
            rows.extend(
                (f"{label} ({ref['source']})", values, ref["num_samples"]) for label, values in ref["rows"].items()
            )
    return rows


# ---------------------------------------------------------------------------------------------------- metrics


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem (Chen et al. 2021): the chance that k of the n samples, drawn without
    replacement, include a correct one.

    ``1 - C(n - c, k) / C(n, k)``, computed stably as ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)`` (1.0 when
    ``n - c < k``).

    Args:
        n: number of samples (>= 1).
        c: number of correct samples, in 0..n.
        k: sample budget, in 1..n.

    Returns:
        A probability in [0, 1].

    Raises:
        ValueError: a non-integer or negative argument, ``k < 1``, ``k > n`` or ``c > n``.
    """
    _check_int("n", n, 1)
    _check_int("c", c, 0)
    _check_int("k", k, 1)
    if k > n:
        raise ValueError(f"pass@k needs k <= n: k={k} is larger than the number of samples n={n}.")
    if c > n:
        raise ValueError(f"pass@k needs c <= n: c={c} correct samples out of n={n}.")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def maj_at_k(answers: Sequence[str | None], gold: str, k: int) -> tuple[Vote, bool]:
    """Majority vote over the first ``k`` answers and whether its label is equivalent to ``gold``.

    Args:
        answers: extracted answers of one problem's samples, in sampling order (None for a sample without an answer).
        gold: the gold answer.
        k: how many of the first answers vote, in 1..len(answers).

    Returns:
        ``(vote, correct)``: the :class:`gbpo.grading.Vote` of ``answers[:k]`` (ties go to the answer seen first;
        None answers never win) and ``vote.label is not None and answers_equivalent(gold, vote.label)``.

    Raises:
        ValueError: ``k`` is not in 1..len(answers).
    """
    _check_int("k", k, 1)
    if k > len(answers):
        raise ValueError(f"maj@k needs k <= number of samples: k={k}, {len(answers)} answers.")
    vote = majority_vote(list(answers[:k]))
    return vote, vote.label is not None and answers_equivalent(gold, vote.label)


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% normal-approximation interval: ``mean +- 1.96 * s / sqrt(len(values))``.

    ``s`` is the sample standard deviation (ddof=1); with one value the interval is the point itself.

    Returns:
        ``(mean, low, high)``.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("mean_ci95 needs at least one value.")
    m = len(values)
    mean = math.fsum(values) / m
    if m == 1:
        return mean, mean, mean
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (m - 1))
    half = Z_95 * std / math.sqrt(m)
    return mean, mean - half, mean + half


def default_ks(num_samples: int) -> list[int]:
    """The k values reported for ``num_samples`` samples: 1, 2, 4, ... up to ``num_samples``, and ``num_samples``.

    Raises:
        ValueError: ``num_samples < 1``.
    """
    _check_int("num_samples", num_samples, 1)
    ks, k = [], 1
    while k <= num_samples:
        ks.append(k)
        k *= 2
    if ks[-1] != num_samples:
        ks.append(num_samples)
    return ks


def _check_ks(ks: Sequence[int] | None, num_samples: int) -> list[int]:
    if ks is None:
        return default_ks(num_samples)
    ks = sorted({_check_int("k", k, 1) for k in ks})
    if not ks:
        raise ValueError("ks is empty: give at least one k.")
    if ks[-1] > num_samples:
        raise ValueError(f"k={ks[-1]} is larger than the number of samples ({num_samples}); use k <= num_samples.")
    return ks


def _score_problem(gold: str, texts: list[str], ks: list[int], fallback_last_number: bool) -> dict[str, Any]:
    extracted = [extract_answer(t, fallback_last_number=fallback_last_number) for t in texts]
    correct = [answers_equivalent(gold, a) for a in extracted]
    by_answer = {a: ok for a, ok in zip(extracted, correct, strict=True) if a is not None}
    votes = {}
    for k in ks:
        vote = majority_vote(extracted[:k])
        # the label is one of the extracted strings, already graded against gold
        votes[str(k)] = {
            "label": vote.label,
            "ratio": vote.ratio,
            "correct": vote.label is not None and by_answer[vote.label],
        }
    return {"extracted": extracted, "correct": correct, "num_correct": sum(correct), "votes": votes}


def compute_metrics(records: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Benchmark metrics from per-problem records (as in :func:`evaluate`'s output).

    Args:
        records: one per problem, each with ``correct`` (one bool per sample, n samples for every problem) and
            ``votes`` (``{str(k): {"correct": bool, ...}}`` for every k in ``ks``); ``completion_tokens`` and
            ``truncated`` (one per sample) are used when present.
        ks: the k values, each in 1..n.

    Returns:
        A flat dict: ``num_problems``, ``num_samples`` (n), ``ks``, ``avg@n`` (key with the number, e.g. ``avg@16``),
        ``avg@n_ci95_low`` / ``avg@n_ci95_high`` (normal approximation over problems, see :func:`mean_ci95`,
        clipped to [0, 1]),
        ``pass@k`` and ``maj@k`` for each k, ``answered_rate`` (fraction of samples with an extracted answer) and,
        when the records have them, ``mean_completion_tokens`` and ``truncated_rate`` (fraction of samples that hit
        the token limit). Accuracies are fractions in [0, 1].

    Raises:
        ValueError: no records, records with different sample counts, or a k outside 1..n.
    """
    if not records:
        raise ValueError("compute_metrics needs at least one problem record.")
    sizes = {len(r["correct"]) for r in records}
    if len(sizes) != 1:
        raise ValueError(f"Every problem must have the same number of samples; got sample counts {sorted(sizes)}.")
    n = sizes.pop()
    ks = _check_ks(ks, n)
    per_problem = [sum(r["correct"]) / n for r in records]
    mean, low, high = mean_ci95(per_problem)
    low, high = max(low, 0.0), min(high, 1.0)  # the normal interval can leave [0, 1]: clipped
    p = len(records)
    metrics: dict[str, Any] = {
        "num_problems": p,
        "num_samples": n,
        "ks": ks,
        f"avg@{n}": mean,
        f"avg@{n}_ci95_low": low,
        f"avg@{n}_ci95_high": high,
    }
    for k in ks:
        metrics[f"pass@{k}"] = math.fsum(pass_at_k(n, sum(r["correct"]), k) for r in records) / p
    for k in ks:
        metrics[f"maj@{k}"] = sum(bool(r["votes"][str(k)]["correct"]) for r in records) / p
    if all("extracted" in r for r in records):
        metrics["answered_rate"] = sum(a is not None for r in records for a in r["extracted"]) / (n * p)
    if all("completion_tokens" in r for r in records):
        metrics["mean_completion_tokens"] = sum(t for r in records for t in r["completion_tokens"]) / (n * p)
    if all("truncated" in r for r in records):
        metrics["truncated_rate"] = sum(bool(t) for r in records for t in r["truncated"]) / (n * p)
    return metrics


# ---------------------------------------------------------------------------------------------------- generation

# one sample: (text, number of generated tokens, hit the token limit)
Sample = tuple[str, int, bool]


def _render_prompt(tokenizer, prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "The tokenizer has no chat template, so the conversational benchmark prompts cannot be rendered; "
            "use a tokenizer with one (an instruct model's, or set tokenizer.chat_template)."
        )
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def _eos_ids(model, tokenizer) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def _generate_transformers(
    model,
    tokenizer,
    prompts: list[str],
    *,
    num_samples: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
    desc: str,
    progress: bool,
) -> list[list[Sample]]:
    """``num_samples`` samples per prompt; prompts repeated, longest first, ``batch_size`` sequences per call."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    jobs = sorted(((i, j) for i in range(len(prompts)) for j in range(num_samples)), key=lambda x: -len(prompts[x[0]]))
    out: list[list[Sample | None]] = [[None] * num_samples for _ in prompts]
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        if temperature > 0
        else {"do_sample": False}
    )
    rng_devices = []
    if device.type == "cuda":
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=rng_devices), tqdm(total=len(jobs), desc=desc, disable=not progress) as bar:
        torch.manual_seed(seed)
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            enc = tokenizer([prompts[i] for i, _ in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {key: value.to(device) for key, value in enc.items()}
            sequences = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos or None,
                repetition_penalty=1.0,
                use_cache=True,
                **sampling,
            )
            new = sequences[:, enc["input_ids"].shape[1] :].tolist()
            for (i, j), ids in zip(batch, new, strict=True):
                stop = next((pos for pos, t in enumerate(ids) if t in eos), None)
                length = stop + 1 if stop is not None else len(ids)
                text = tokenizer.decode(ids[:length], skip_special_tokens=True)
                out[i][j] = (text, length, stop is None and length >= max_new_tokens)
            bar.update(len(batch))
    return out  # type: ignore[return-value]


def _generate_vllm(
    llm, tokenizer, prompts: list[str], *, num_samples, temperature, top_p, max_new_tokens, seed, progress
) -> list[list[Sample]]:
    from vllm import SamplingParams

    params = SamplingParams(n=num_samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed)
    token_prompts = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
    outputs = llm.generate(token_prompts, params, use_tqdm=progress)
    return [[(o.text, len(o.token_ids), o.finish_reason == "length") for o in req.outputs] for req in outputs]


def _is_vllm(model) -> bool:
    return type(model).__module__.split(".")[0] == "vllm"


@contextlib.contextmanager
def _inference_mode(model, tokenizer):
    """eval() + no_grad + left padding (+ a pad token), everything restored afterwards."""
    import torch

    modes = [(module, module.training) for module in model.modules()]  # per module: some may be frozen in eval
    padding_side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    try:
        model.eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        tokenizer.padding_side = padding_side
        if pad_token is None:
            tokenizer.pad_token = None


def _load_named(benchmarks: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    if isinstance(benchmarks, Mapping):
        named = dict(benchmarks)
    elif isinstance(benchmarks, str):
        raise TypeError("benchmarks must be a list of names or a dict of datasets, not a string.")
    else:
        labels = [_benchmark_label(name) for name in benchmarks]
        if len(set(labels)) != len(labels):
            raise ValueError(f"benchmarks names a benchmark twice (files are named by their stem): {labels}")
        named = {label: load_benchmark(name) for label, name in zip(labels, benchmarks, strict=True)}
    if not named:
        raise ValueError("benchmarks is empty: give at least one benchmark.")
    for name, ds in named.items():
        missing = [c for c in ("prompt", "answer") if c not in ds.column_names]
        if missing:
            raise ValueError(f"Benchmark {name!r} lacks column(s) {missing}; it has {ds.column_names}.")
        if len(ds) == 0:
            raise ValueError(f"Benchmark {name!r} has no rows.")
    return named


def evaluate(
    model,
    tokenizer,
    benchmarks: Mapping[str, Any] | Sequence[str],
    *,
    num_samples: int = 16,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 3072,
    seed: int = 0,
    batch_size: int = 64,
    fallback_last_number: bool = False,
    ks: Sequence[int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample, grade and score a loaded model on benchmarks.

    Works on a model in the middle of training: the model is put in ``eval()`` mode and restored to its previous mode,
    generation runs under ``torch.no_grad()``, the tokenizer's ``padding_side`` (and a missing pad token, borrowed
    from EOS) is restored, and the global torch RNG state is left as it was (sampling uses a forked RNG seeded with
    ``seed``). Pass an unwrapped model (``accelerator.unwrap_model``), not a DDP/DeepSpeed wrapper. Sampling is pure
    temperature + nucleus (``top_k`` disabled, no repetition penalty), like vLLM's ``SamplingParams``; ``temperature
    == 0`` is greedy.

    Args:
        model: a ``transformers`` causal LM (generation batched on its device, left padding, ``batch_size``
            sequences per ``generate`` call, prompts repeated ``num_samples`` times) or a ``vllm.LLM``
            (``SamplingParams(n=...)``).
        tokenizer: its tokenizer, with a chat template for conversational prompts.
        benchmarks: ``{name: datasets.Dataset}`` with ``prompt`` (chat messages, or an already rendered string) and
            ``answer`` (str) columns, e.g. from :func:`gbpo.data.load_benchmark`; or a list of benchmark names/files,
            loaded with :func:`gbpo.data.load_benchmark` defaults (a file is named by its stem).
        num_samples: n, completions per problem (>= 1).
        temperature: sampling temperature (>= 0; 0 is greedy).
        top_p: nucleus probability, in (0, 1].
        max_new_tokens: generated tokens per completion (>= 1).
        seed: seed of the sampling RNG.
        batch_size: sequences per ``generate`` call (transformers backend; >= 1).
        fallback_last_number: grade a completion without ``\\boxed{}`` by its last number.
        ks: the k values for pass@k and maj@k (default :func:`default_ks`), each in 1..num_samples.
        progress: show a tqdm progress bar.

    Returns:
        ``{"config": {generation settings, "ks", "backend", "seconds"}, "benchmarks": {name: {"metrics": ...,
        "records": [...]}}}``. ``metrics`` is :func:`compute_metrics`'s flat dict (``avg@n``, its CI, ``pass@k``,
        ``maj@k``, ...). Each record: ``index``, ``id``/``problem``/``level`` when the dataset has them, ``prompt``
        (as given), ``prompt_text`` (rendered), ``answer``, ``samples`` (n strings), ``extracted`` (n str/None),
        ``correct`` (n bools), ``num_correct``, ``completion_tokens`` (n ints), ``truncated`` (n bools) and ``votes``
        (``{str(k): {"label", "ratio", "correct"}}``, the vote over the first k samples).

    Raises:
        ValueError: an argument out of range, k > num_samples, an empty benchmark set, a dataset without ``prompt``
            or ``answer``, a conversational prompt with a tokenizer that has no chat template, or (from
            :func:`gbpo.data.load_benchmark`) an unknown benchmark name.
    """
    _check_int("num_samples", num_samples, 1)
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}.")
    ks = _check_ks(ks, num_samples)
    named = _load_named(benchmarks)
    vllm = _is_vllm(model)
    config = {
        "backend": "vllm" if vllm else "transformers",
        "num_samples": num_samples,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "batch_size": batch_size,
        "fallback_last_number": fallback_last_number,
        "ks": ks,
    }
    started = time.monotonic()
    results: dict[str, Any] = {}
    mode = contextlib.nullcontext() if vllm else _inference_mode(model, tokenizer)
    with mode:
        for name, ds in named.items():
            rows = ds.to_list()
            prompts = [_render_prompt(tokenizer, row["prompt"]) for row in rows]
            gen_kwargs = dict(
                num_samples=num_samples,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                seed=seed,
                progress=progress,
            )
            if vllm:
                samples = _generate_vllm(model, tokenizer, prompts, **gen_kwargs)
            else:
                samples = _generate_transformers(
                    model, tokenizer, prompts, batch_size=batch_size, desc=f"eval {name}", **gen_kwargs
                )
            records = []
            for index, (row, prompt_text, outs) in enumerate(zip(rows, prompts, samples, strict=True)):
                gold = str(row["answer"])
                record: dict[str, Any] = {"index": index}
                record.update({key: row[key] for key in ("id", "problem", "level") if key in row})
                texts = [text for text, _, _ in outs]
                record.update(
                    prompt=row["prompt"],
                    prompt_text=prompt_text,
                    answer=gold,
                    samples=texts,
                    **_score_problem(gold, texts, ks, fallback_last_number),
                    completion_tokens=[n_tokens for _, n_tokens, _ in outs],
                    truncated=[cut for _, _, cut in outs],
                )
                records.append(record)
            metrics = compute_metrics(records, ks)
            logger.info("%s: %s", name, {k: v for k, v in metrics.items() if isinstance(v, float)})
            results[name] = {"metrics": metrics, "records": records}
    config["seconds"] = round(time.monotonic() - started, 3)
    return {"config": config, "benchmarks": results}


# ---------------------------------------------------------------------------------------------------- model loading


def _benchmark_label(name: str) -> str:
    return name if name in BENCHMARKS else Path(name).stem


def _check_model_path(model: str) -> None:
    """ValueError for a local path that cannot be a model: missing, or a directory without config files."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ValueError(
                f"Model directory {path} has no config.json (a transformers model) or adapter_config.json (a PEFT "
                "adapter): is it the training output_dir, or a checkpoint-N directory inside it?"
            )
    elif path.exists():
        raise ValueError(f"Model path {path} is a file; give the model's directory.")
    elif model.startswith((".", "/", "~")) or model.count("/") > 1:  # a hub id has one slash at most
        raise ValueError(f"Model path {path} does not exist.")


def load_model(model: str, *, dtype: str = "auto", device: str | None = None):
    """Load a model and its tokenizer for evaluation (transformers backend).

    Args:
        model: a short id of :data:`gbpo.models.EMBEDDED_MODELS`, a hub id or a local directory. A directory with
            ``adapter_config.json`` is a PEFT adapter: it is loaded with its base model
            (``peft.AutoPeftModelForCausalLM``) and merged (``merge_and_unload``); its tokenizer comes from the
            adapter directory when it has one, else from the base model.
        dtype: ``"auto"`` (bfloat16 on a GPU that supports it, else float32), ``"float32"``, ``"bfloat16"`` or
            ``"float16"``.
        device: torch device; default ``"cuda"`` when available, else ``"cpu"``.

    Returns:
        ``(model, tokenizer, path)``: the model in eval mode on ``device``, its tokenizer and the resolved path.

    Raises:
        ValueError: a local path that does not exist, or a directory without ``config.json`` / ``adapter_config.json``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models import resolve_model

    path = resolve_model(model)
    _check_model_path(path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        on_gpu = str(device).startswith("cuda") and torch.cuda.is_available()
        torch_dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    adapter = Path(path).expanduser() / "adapter_config.json"
    if adapter.is_file():
        from peft import AutoPeftModelForCausalLM

        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        loaded = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch_dtype).merge_and_unload()
        has_tokenizer = (Path(path).expanduser() / "tokenizer_config.json").is_file()
        tokenizer = AutoTokenizer.from_pretrained(path if has_tokenizer else resolve_model(base))
    else:
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    return loaded.to(device).eval(), tokenizer, path


def _load_vllm(path: str, *, seed: int, dtype: str):
    """``(vllm.LLM, tokenizer)`` for ``path``; a PEFT adapter is merged into a temporary directory first."""
    import vllm
    from transformers import AutoTokenizer

    adapter = Path(path).expanduser() / "adapter_config.json"
    if adapter.is_file():
        merged, tokenizer, _ = load_model(path, dtype="float32" if dtype == "auto" else dtype, device="cpu")
        tmp = tempfile.mkdtemp(prefix="gbpo-merged-")
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del merged
        path = tmp
    return vllm.LLM(model=path, seed=seed, dtype=dtype), AutoTokenizer.from_pretrained(path)


# ---------------------------------------------------------------------------------------------------- reports


def load_results(directory: str | Path) -> dict[str, Any]:
    """Read ``results.json`` from an evaluation output directory.

    Raises:
        ValueError: the directory does not exist, has no ``results.json``, or it is not a results file
            (unreadable JSON, or no ``benchmarks`` with ``metrics``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory.")
    path = directory / RESULTS_FILE
    if not path.is_file():
        raise ValueError(f"{directory} has no {RESULTS_FILE}: it is not a `gbpo.evaluate` output directory.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Could not read {path}: {e}") from e
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benchmarks, dict) or not all(isinstance(b, dict) and "metrics" in b for b in benchmarks.values()):
        raise ValueError(f"{path} is not an evaluation results file (no benchmarks with metrics).")
    return data


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def render_summary(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Markdown report: the runs' settings, then one table per benchmark with one row per run.

    Columns: problems, samples n, ``avg@n`` with its 95% interval, ``pass@k`` and ``maj@k`` for every k any run has
    (``–`` where a run lacks it), all in percent. Published reference rows (:func:`reference_rows`, from each run's
    ``config["model"]``) follow the runs, in the avg@n and pass@1 columns.

    Args:
        runs: ``[(label, results), ...]`` with results as written to ``results.json`` (``config`` and
            ``benchmarks[name]["metrics"]``).

    Returns:
        The markdown text.
    """
    lines = ["# Evaluation summary", ""]
    lines += ["| run | model | backend | T | top_p | max new tokens | seed |", "|---|---|---|---|---|---|---|"]
    for label, res in runs:
        c = res.get("config", {})
        lines.append(
            f"| {label} | {c.get('model', '?')} | {c.get('backend', '?')} | {c.get('temperature', '?')} | "
            f"{c.get('top_p', '?')} | {c.get('max_new_tokens', '?')} | {c.get('seed', '?')} |"
        )
    lines += [
        "",
        "Accuracies in percent. avg@n: mean accuracy of the n samples per problem (= pass@1), with a 95% interval from "
        "the normal approximation over problems (mean ± 1.96·s/√P). pass@k: unbiased estimator (Chen et al. 2021). "
        "maj@k: majority vote over the first k samples.",
    ]
    names: list[str] = []
    for _, res in runs:
        names += [b for b in res["benchmarks"] if b not in names]
    references: dict[str, tuple[dict[str, float], int]] = {}
    for _, res in runs:
        for ref_label, values, ref_n in reference_rows(res.get("config", {}).get("model")):
            references.setdefault(ref_label, (values, ref_n))
    for name in names:
        present = [(label, res["benchmarks"][name]["metrics"]) for label, res in runs if name in res["benchmarks"]]
        ks = sorted({k for _, m in present for k in m["ks"]})
        header = ["run", "problems", "n", "avg@n [95% CI]"] + [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks]
        lines += ["", f"## {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label, m in present:
            n = m["num_samples"]
            avg = f"{_pct(m[f'avg@{n}'])} [{_pct(m[f'avg@{n}_ci95_low'])}, {_pct(m[f'avg@{n}_ci95_high'])}]"
            cells = [label, str(m["num_problems"]), str(n), avg]
            cells += [_pct(m.get(f"pass@{k}")) for k in ks] + [_pct(m.get(f"maj@{k}")) for k in ks]
            lines.append("| " + " | ".join(cells) + " |")
        for ref_label, (values, ref_n) in references.items():
            if name in values:
                value = f"{values[name]:.1f}"
                cells = (
                    [f"*{ref_label}*", "", str(ref_n), value] + [value if k == 1 else "" for k in ks] + [""] * len(ks)
                )
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_pass_at_k(runs: Sequence[tuple[str, Mapping[str, Any]]], path: str | Path) -> Path:
    """Plot pass@k (solid) and maj@k (dashed) against k (log2 axis), one panel per benchmark, one colour per run.

    Published reference pass@1 numbers (:func:`reference_rows`) are drawn as stars at k = 1. Uses matplotlib's
    object-oriented Agg canvas (no pyplot, the global backend is untouched).

    Args:
        runs: ``[(label, results), ...]`` as for :func:`render_summary`.
        path: the PNG file to write.

    Returns:
        ``path`` as a Path.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names: list[str] = []
    for _, res in runs:
        names += [b for b in res["benchmarks"] if b not in names]
    fig = Figure(figsize=(4.2 * len(names), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, name in zip(axes, names, strict=True):
        for color, (label, res) in zip(colors, runs, strict=True):
            if name not in res["benchmarks"]:
                continue
            m = res["benchmarks"][name]["metrics"]
            ks = m["ks"]
            ax.plot(ks, [100 * m[f"pass@{k}"] for k in ks], "-o", color=color, ms=3, label=f"{label} pass@k")
            ax.plot(ks, [100 * m[f"maj@{k}"] for k in ks], "--s", color=color, ms=3, label=f"{label} maj@k")
        seen: set[str] = set()
        for _, res in runs:
            for ref_label, values, _ in reference_rows(res.get("config", {}).get("model")):
                if name in values and ref_label not in seen:
                    seen.add(ref_label)
                    color = f"C{(len(runs) + len(seen) - 1) % 10}"
                    short = ref_label.split(" (")[0] + " (published)"
                    ax.plot([1], [values[name]], "*", ms=9, color=color, label=short)
        ax.set_xscale("log", base=2)
        ticks = sorted(
            {k for _, res in runs if name in res["benchmarks"] for k in res["benchmarks"][name]["metrics"]["ks"]}
        )
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        ax.set_title(name)
        ax.set_xlabel("k")
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def write_outputs(runs: Sequence[tuple[str, Mapping[str, Any]]], output_dir: str | Path) -> dict[str, Path]:
    """Write ``summary.md`` and ``pass_at_k.png`` for ``runs`` into ``output_dir`` (created if needed).

    The plot is skipped with a warning when matplotlib is not installed.

    Returns:
        ``{"summary": path, "plot": path}`` (``plot`` absent when skipped).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {"summary": output_dir / SUMMARY_FILE}
    written["summary"].write_text(render_summary(runs), encoding="utf-8")
    try:
        written["plot"] = plot_pass_at_k(runs, output_dir / PLOT_FILE)
    except ImportError:
        logger.warning("matplotlib is not installed: %s not written (pip install matplotlib).", PLOT_FILE)
    return written


def compare(directories: Sequence[str | Path], output_dir: str | Path) -> dict[str, Path]:
    """Render earlier evaluation runs side by side into ``output_dir`` (``summary.md``, ``pass_at_k.png``).

    Runs are labelled by directory name (the full path where two names clash).

    Raises:
        ValueError: no directories, or one that is not an evaluation output directory (see :func:`load_results`).
    """
    if not directories:
        raise ValueError("compare needs at least one result directory.")
    loaded = [load_results(d) for d in directories]
    names = [Path(d).resolve().name for d in directories]
    labels = [name if names.count(name) == 1 else str(d) for name, d in zip(names, directories, strict=True)]
    return write_outputs(list(zip(labels, loaded, strict=True)), output_dir)


# ---------------------------------------------------------------------------------------------------- CLI


def _csv(cast: Callable[[str], Any]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            return [cast(x) for x in items]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"bad list {text!r}: {e}") from e

    return parse


def make_parser() -> argparse.ArgumentParser:
    """The ``python -m gbpo.evaluate`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m gbpo.evaluate",
        description="Evaluate a model on math benchmarks (avg@n, pass@k, maj@k), or compare earlier runs.",
    )
    p.add_argument("--model", help="short id (smollm2-135m), hub id, model directory or PEFT adapter directory")
    p.add_argument("--compare", nargs="+", metavar="DIR", help="render earlier result directories side by side")
    p.add_argument(
        "--benchmarks",
        type=_csv(str),
        default=["aime24", "amc", "math500"],
        help=f"comma-separated benchmarks ({', '.join(BENCHMARKS)}) or .json/.jsonl/.parquet files",
    )
    p.add_argument("--num-samples", type=int, default=16, help="samples per problem, n (default 16)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=3072)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ks", type=_csv(int), help="k values for pass@k/maj@k (default 1,2,4,...,n)")
    p.add_argument("--output-dir", help="default eval_results/<model name> (eval_results/compare with --compare)")
    p.add_argument("--limit", type=int, help="first N problems of each benchmark")
    p.add_argument("--levels", type=_csv(int), help="MATH levels to keep, e.g. 1,2 (needs a level column)")
    p.add_argument("--instruction", default=INSTRUCTION, help="the line after each problem (training's default)")
    p.add_argument("--system-prompt", help="optional system message")
    p.add_argument("--fallback-last-number", action="store_true", help="grade unboxed completions by their last number")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per generate call (transformers backend)")
    p.add_argument("--backend", choices=["auto", "vllm", "transformers"], default="auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.compare:
        if args.model:
            p.error("--compare renders earlier runs; do not give --model with it.")
        return
    if not args.model:
        p.error("--model is required (or --compare DIR ...).")
    for name in args.benchmarks:
        if name not in BENCHMARKS and not Path(name).expanduser().is_file():
            p.error(
                f"unknown benchmark {name!r}: known benchmarks are {', '.join(sorted(BENCHMARKS))} (or a file path)"
            )
    labels = [_benchmark_label(b) for b in args.benchmarks]
    if len(set(labels)) != len(labels):
        p.error(f"--benchmarks names a benchmark twice: {labels}")
    for flag in ("num_samples", "max_new_tokens", "batch_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be >= 1, got {args.limit}")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        p.error("--temperature must be >= 0 and --top-p in (0, 1]")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    try:
        _check_ks(args.ks, args.num_samples)
    except ValueError as e:
        p.error(f"--ks: {e}")
    if args.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        p.error("--backend vllm: vllm is not installed (pip install vllm), use --backend transformers")
    try:
        from .models import resolve_model

        _check_model_path(resolve_model(args.model))
    except (ValueError, FileNotFoundError) as e:
        p.error(f"--model: {e}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the CLI (see the module docstring and ``--help``).

    Returns:
        The results dict written to ``results.json`` (``config`` with the model and CLI settings, ``benchmarks``), or
        for ``--compare`` ``{"compared": [dirs], "outputs": {...}}``.

    Raises:
        SystemExit: bad arguments (argparse's status 2 with a message): unknown benchmark, k > --num-samples, a model
            directory without config.json/adapter_config.json, a --compare directory without results.json, ...
    """
    p = make_parser()
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    _validate(p, args)
    if args.compare:
        output_dir = Path(args.output_dir or "eval_results/compare")
        try:
            outputs = compare(args.compare, output_dir)
        except ValueError as e:
            p.error(f"--compare: {e}")
        print(outputs["summary"].read_text(encoding="utf-8"))
        return {"compared": list(args.compare), "outputs": outputs}

    output_dir = Path(args.output_dir or Path("eval_results") / re.sub(r"[^\w.-]+", "--", args.model.strip("/")))
    try:
        datasets_ = {
            _benchmark_label(name): load_benchmark(
                name,
                levels=args.levels,
                limit=args.limit,
                system_prompt=args.system_prompt,
                instruction=args.instruction,
            )
            for name in args.benchmarks
        }
    except ValueError as e:
        p.error(str(e))

    import torch

    backend = args.backend
    if backend == "auto":
        backend = (
            "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "transformers"
        )
    from .models import resolve_model

    if backend == "vllm":
        path = resolve_model(args.model)
        model, tokenizer = _load_vllm(path, seed=args.seed, dtype=args.dtype)
    else:
        model, tokenizer, path = load_model(args.model, dtype=args.dtype)
    results = evaluate(
        model,
        tokenizer,
        datasets_,
        num_samples=args.num_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
        fallback_last_number=args.fallback_last_number,
        ks=args.ks,
        progress=not args.quiet,
    )
    results["config"] = {
        "model": args.model,
        "model_path": str(path),
        "dtype": args.dtype,
        "benchmarks": list(args.benchmarks),
        "limit": args.limit,
        "levels": args.levels,
        "instruction": args.instruction,
        "system_prompt": args.system_prompt,
        **results["config"],
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f".{RESULTS_FILE}.tmp"
    tmp.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, output_dir / RESULTS_FILE)
    outputs = write_outputs([(output_dir.resolve().name, results)], output_dir)
    print(outputs["summary"].read_text(encoding="utf-8"))
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
