"""Sampling benchmark completions from a loaded model (transformers ``generate`` or a ``vllm.LLM``) and grading them.

:func:`evaluate_benchmarks` renders each problem with the tokenizer's chat template, samples ``num_samples``
completions, grades them with :mod:`gbpo.grading` and scores them with :func:`gbpo.evaluation.metrics.compute_metrics`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data import BENCHMARKS, load_benchmark
from .metrics import _check_int, _check_ks, _score_problem, check_answer_extraction, compute_metrics

__all__ = ["evaluate_benchmarks"]

logger = logging.getLogger(__name__)

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


def _vllm_on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _generate_vllm(
    llm, tokenizer, prompts: list[str], *, num_samples, temperature, top_p, max_new_tokens, seed, progress
) -> list[list[Sample]]:
    """``num_samples`` samples per prompt from a ``vllm.LLM`` in one ``generate`` call (``SamplingParams(n=...)``).

    Seeding: on a GPU each request carries ``seed``. vLLM's CPU backend rejects per-request seeds with top-p sampling
    ("CPU Generator does not use offset"), and its in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) samples
    from the global torch RNG, so on CPU the call runs under a forked torch RNG seeded with ``seed``: the same seed
    gives the same samples, and the caller's RNG state is left as it was. Greedy decoding (``temperature == 0``)
    asks vLLM for one sample per prompt (it rejects ``n > 1`` there) and repeats it ``num_samples`` times.
    """
    import torch
    from vllm import SamplingParams

    on_cpu = _vllm_on_cpu()
    greedy = temperature == 0  # vLLM rejects n > 1 with greedy sampling: one sample, repeated
    params = SamplingParams(
        n=1 if greedy else num_samples,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_new_tokens,
        seed=None if on_cpu else seed,
    )
    token_prompts = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        outputs = llm.generate(token_prompts, params, use_tqdm=progress)
    samples = [[(o.text, len(o.token_ids), o.finish_reason == "length") for o in req.outputs] for req in outputs]
    return [s * num_samples for s in samples] if greedy else samples


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


def evaluate_benchmarks(
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
    answer_extraction: str = "lenient",
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
        fallback_last_number: grade a completion without ``\\boxed{}`` by its last number (strict extraction;
            lenient extraction already ends with the last number).
        answer_extraction: ``"lenient"`` (default, like the Qwen2.5-Math and lm-evaluation-harness evaluators: a
            completion without ``\\boxed{}`` is read after "final answer is"/"answer:", else by its last math, else
            by its last number; several boxes closing it are one answer set) or ``"strict"`` (the last box only, as
            the TTRL reward by default). See :func:`gbpo.grading.extract_answer`.
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
    check_answer_extraction(answer_extraction)
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
        "answer_extraction": answer_extraction,
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
                    **_score_problem(gold, texts, ks, fallback_last_number, answer_extraction),
                    completion_tokens=[n_tokens for _, n_tokens, _ in outs],
                    truncated=[cut for _, _, cut in outs],
                )
                records.append(record)
            metrics = compute_metrics(records, ks)
            logger.info("%s: %s", name, {k: v for k, v in metrics.items() if isinstance(v, float)})
            results[name] = {"metrics": metrics, "records": records}
    config["seconds"] = round(time.monotonic() - started, 3)
    return {"config": config, "benchmarks": results}


def _benchmark_label(name: str) -> str:
    return name if name in BENCHMARKS else Path(name).stem
