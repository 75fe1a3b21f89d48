"""GPU acceptance: one command for the first GPU machine (no hub access), and a CPU mode that CI runs.

    bash launch/gpu_acceptance.sh                 # GPU: the AIME recipe on 1 GPU, 2 generations of 512-token
                                                  # completions, then the GBPO/GRPO benchmark: <= 8 min (estimate)
    bash launch/gpu_acceptance.sh --no-vllm       # the same with transformers generation (use_vllm false)
    bash launch/gpu_acceptance.sh --full          # GPU: the recipe's 3072-token completions and layout (longer)
    bash launch/gpu_acceptance.sh --dry-run       # any machine: build the model, print the plan, train nothing
    bash launch/gpu_acceptance.sh --cpu           # CPU: the same on a tiny model, vLLM for CPU, a few minutes
    bash launch/gpu_acceptance.sh --cpu --no-vllm # CPU, transformers generation (what CI runs)
    bash launch/gpu_acceptance.sh -- --vllm_gpu_memory_utilization 0.25  # more gbpo.train keys after `--`
    python benchmarks/gpu_acceptance.py [the same arguments]         # what the shell script runs (after preflight)

The mode. Generation is vLLM colocated where a vLLM for this torch and device imports, else (or with ``--no-vllm``)
transformers generation (``use_vllm: false``); the GPU mode trains under DeepSpeed ZeRO-3 where DeepSpeed imports,
else in one plain process; the CPU mode always in one plain process. The preflight's ``assess``
(benchmarks/preflight.py) decides, as its table says; ``mode_text`` in the JSON and the verdict line name the mode.

What it does, in OUT (default /tmp/gbpo_acceptance):

1. Builds a random-weight model of Qwen2.5-Math-1.5B's shape (``QWEN25_MATH_15B`` of benchmarks/gbpo_vs_grpo.py,
   vocabulary 151,936) with a tokenizer made in code (`padded_tokenizer`: tests/tiny.py's character-level chat
   tokenizer, padded with dummy tokens up to the model's vocabulary, so every id vLLM samples decodes), and saves
   both (safetensors) to OUT/model (replacing what is there), which vLLM and gbpo.train load by path. ``--cpu``:
   tests/tiny.py's tiny model (``VLLM_SHAPE``, head size 32 as vLLM's CPU kernels need).
2. Prints the plan, and on the GPU the memory plan of `gbpo.memory_plan` for this run (the GPU's memory from
   nvidia-smi, a nominal 80 GiB when none is visible; ZeRO stage 3 under DeepSpeed, else 0; the longest AIME
   prompt measured with the character-level tokenizer, ~1,030 tokens).
3. Trains recipes/qwen_math_aime.yaml with gbpo.train on one process for two generations (under ZeRO-3:
   ``accelerate launch --config_file launch/zero3_1x4.yaml --num_processes 1``). Only these keys are overridden on
   the command line: ``model_name_or_path`` (OUT/model), ``max_steps``, ``report_to none``, ``output_dir``
   (OUT/train, emptied first), ``save_strategy no``; ``use_vllm false`` with transformers generation, and on the GPU
   ``vllm_gpu_memory_utilization 0.3`` with vLLM (the recipe's 0.4 does not fit one 80 GB GPU: ``python -m
   gbpo.layout recipes/qwen_math_aime.yaml --num_processes 1 --gpu-memory-gib 80``); ``max_completion_length`` and
   ``learning_rate`` per mode (below); and on the GPU ``prompts_per_generation 2`` (except ``--full`` with vLLM):
   2 prompts x 64 = 128 completions generated at once, which transformers generation holds on one GPU (KV cache
   ~5.3 GiB at 512-token completions, ~14 GiB at 3072; the recipe's 512 rows would need ~56 GiB at 3072).
   ``max_steps`` is the optimizer step in which the second generation runs: TRL generates every
   ``steps_per_generation x num_iterations`` micro-batches; on 1 process gbpo.train derives the layout
   (`gbpo.layout`, computed here the same way): ``per_device_train_batch_size`` 32, ``gradient_accumulation_steps``
   4, and ``steps_per_generation`` 4 with 2 prompts per generation (generations at steps 1 and 4 x 10 / 4 + 1 = 11,
   ``max_steps`` 11) or 16 with the recipe's 8 (steps 1 and 41). ``--cpu``: one plain Python process, fp32
   (``--dtype float32 --bf16 false --use_cpu true``), 8-token completions, learning rate 1e-3, the recipe's layout
   (``max_steps`` 41; with transformers generation, ``--cpu --no-vllm``, 2 prompts per generation as on the GPU:
   ``max_steps`` 11, which keeps CI's run of that mode short).
4. Computes GBPO's loss on one fixed batch in bf16 on the run's device against fp32 on the CPU
   (benchmarks/acceptance_loss.py, its own process, after training has freed the GPU).
5. Runs benchmarks/gbpo_vs_grpo.py (GBPO and GRPO, each in its own process, transformers generation): GPU
   ``--steps 3 --num-generations 32 --max-completion-length 256``, ``--full`` ``--steps 4 ... 1024`` (as
   launch/gpu_smoke.sh), CPU ``--tiny --steps 2 --num-generations 4 --max-completion-length 8``.
6. Writes everything to OUT/acceptance.json, prints it with one PASS/FAIL/N/A line per check and the verdict, and
   exits with status 1 when a check failed (0 when none failed). Before that exit, and after the JSON is written (so
   a kill at the machine's limit keeps the verdict), it runs benchmarks/precision.py on the same model and recipe
   (1 prompt x the recipe's 64 completions of ``PRECISION_MAX_COMPLETION_LENGTH`` tokens, GPU 256, CPU 8; one AdamW
   step at the recipe's lr; the ratio in fp32, bf16 autocast, bf16 weights, bf16 with an fp32 head and fp16 autocast
   on the run's device; stopped at ``PRECISION_TIMEOUT`` s, GPU 90) and adds its figures to the JSON as
   ``precision``: what one step at the recipe's lr does to the ratio in each precision, not a check. The training
   process's own record (log history, timings) is OUT/train_record.json; gbpo.train's metrics are in
   OUT/train/metrics.jsonl.

The GPU default's time on one H100, estimated (not yet measured): preflight and the mode's package probes ~30 s;
the model ~30 s; training ~2.5-3.5 min (start-up with DeepSpeed and, with vLLM, the engine's graph capture ~1-1.5
min; 11 steps of 4 micro-batches of 16 trained rows x ~1,540 tokens, ~5-8 s each; two generations of 128 rows x 512
tokens, ~20 s each with transformers, seconds with vLLM); the loss check ~30 s; the benchmark ~1.5 min (2 processes,
3 steps of 32 x 256 tokens each). About 5-6.5 min to the verdict, then ~1 min for the precision figures (model load,
64 completions of 256 tokens, one step, 15 log-prob passes). Training stops at 300 s, the benchmark at 150 s and the
precision figures at 90 s (SIGTERM to the process group, the launcher passes it on; SIGKILL 30 s later;
``TRAIN_TIMEOUT`` / ``BENCH_TIMEOUT`` / ``PRECISION_TIMEOUT``, 0 for none), so the verdict is written within ~9.5 min,
inside the machine's 10-minute limit, and the command ends within ~11.5 min at worst (a kill after 10 min loses only
the precision figures).

Reported (acceptance.json):

- ``mode`` (``gpu``/``cpu``), ``generation`` (``vllm``/``transformers``), ``engine`` (``zero3``/``accelerate``/
  ``plain``), ``mode_text`` and ``verdict`` (PASS or FAIL with the failed checks, the mode, and the counts of
  passed, failed and not-applicable checks).
- ``peak_gpu_memory_gib``: the most memory the GPU had in use during training, sampled every 0.5 s with
  ``nvidia-smi`` (the whole device: training, vLLM's engine and KV cache, CUDA contexts);
  ``train.gpu_memory`` also has the memory in use before training, the device's total, and PyTorch's own peaks in
  the training process (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``). Without ``nvidia-smi``
  ``peak_gpu_memory_gib`` is PyTorch's reserved peak. ``None`` on CPU.
- ``memory_against_estimate``: PyTorch's allocated peak in the training process against the memory plan's total
  (``peak_over_estimate``; the plan's items and lines with it); ``{"status": "not applicable"}`` on CPU.
- ``loss_precision``: benchmarks/acceptance_loss.py's result: GBPO's loss in bf16 (GPU; CPU mode: bf16 on the CPU)
  and in fp32 on the CPU, their relative difference, the log-prob errors.
- ``tokens_per_second``: tokens generated (all completions, voting ones included; vLLM's ``generate`` or TRL's
  transformers ``_generate_single_turn``) per second of training (TRL's ``train_runtime``);
  ``generation_tokens_per_second``: the same tokens per second spent generating.
- ``seconds_per_step``: the mean of TRL's ``step_time`` over all steps; ``train`` splits it into steps with and
  without a generation.
- ``importance_sampling_ratio`` ``min``/``mean``/``max``: TRL's ``sampling/importance_sampling_ratio/*`` at the
  two generations (min of the mins, mean of the means, max of the maxes). vLLM only.
- ``masked_token_fraction`` / ``masked_completion_fraction``: TRL does not log them, so the training process counts
  them (a wrapper around the trainer's ``_generate_and_score_completions``, in this script only): the loss tokens
  of the trained rows whose IS ratio is exactly 0 (what TRL's ``*_mask`` modes set outside the clip range), and the
  completions with at least one such token, over both generations. vLLM only.
- ``sampling_logp_difference``: TRL's ``sampling/sampling_logp_difference/mean`` (mean |training log-prob - vLLM
  log-prob| of the sampled tokens) at the first and second generation, and whether it stayed flat. vLLM only.

Checks (``checks`` in the JSON, each with ``status`` "pass", "fail" or "not applicable"; ``passed`` is true when
none failed):

- ``training_ran``: gbpo.train exited with status 0 and the training process wrote its record.
- ``vllm_colocate`` (vLLM): the trainer generated with a colocated vLLM engine.
- ``transformers_generation`` (transformers generation only): ``use_vllm`` false, no engine, and two calls of
  transformers generation that produced tokens.
- ``zero3`` (GPU only): DeepSpeed ran ZeRO stage 3; "not applicable" when DeepSpeed does not import.
- ``all_steps``: ``max_steps`` optimizer steps trained and logged.
- ``two_generations``: generations logged at steps 1 and ``max_steps`` and nowhere else.
- ``weights_synced`` (vLLM): TRL pushed the trained weights to vLLM before the second generation (a
  ``sync_weights`` call at global step ``max_steps - 1``).
- ``importance_sampling_ratio`` (vLLM): at each generation, min/mean/max are finite and the mean is within
  [0.8, 1.25] (the same weights on both sides: only kernel and bf16 rounding differ).
- ``masked_fraction`` (vLLM): with a ``*_truncate`` IS mode (the recipe's ``token_truncate``) no token is masked
  (0.0; a ratio of 0 would need a log-prob gap of ~100 nats); with a ``*_mask`` mode at most 5% of the loss tokens.
- ``vllm_follows_training`` (vLLM): the sampling log-prob difference is flat after the second generation, defined
  as ``second <= 2 x first + 1e-3``: an engine whose weights were corrupted, or stayed behind while the trained
  weights moved, samples from another distribution than the one training scores, and the difference grows.
  Caveat: a random model writes no ``\\boxed{}`` answer, so the majority-vote rewards and advantages are 0 and
  only the entropy bonus and the KL term move the weights; at the recipe's learning rate (5e-7) 10-40 Adam steps
  move them by ~5e-6-2e-5 against an initialisation scale of 0.02, far less than bf16 rounding shows in the
  log-probs. So on the GPU this check catches a sync that corrupts the weights, not one that silently keeps the
  initial weights; a larger ``LEARNING_RATE`` (e.g. 1e-4; not measured) lets the weights move enough for that to
  show too. The CPU mode trains at 1e-3 (moves of the order of the weights themselves) with fp32 on both sides
  (a first difference near 0), where either failure shows.
- ``loss_precision``: the bf16 loss is within 5% of the fp32 one (relative difference; a broken log-prob kernel
  moves it by O(1)).
- ``benchmark``: benchmarks/gbpo_vs_grpo.py exited with status 0 and reported GBPO, GRPO and a finite step-time
  ratio.

With transformers generation the five vLLM checks are "not applicable", not failed.

Environment variables (or the options of the same name): OUT, MAX_COMPLETION_LENGTH (training; default GPU 512,
``--full`` the recipe's 3072, CPU 8), LEARNING_RATE (default the recipe's, CPU 1e-3), BENCH_STEPS (GPU 3, ``--full``
4, CPU 2), BENCH_MAX_COMPLETION_LENGTH (GPU 256, ``--full`` 1024, CPU 8), TRAIN_TIMEOUT and BENCH_TIMEOUT (seconds;
GPU 300 and 150, otherwise none), PRECISION_MAX_COMPLETION_LENGTH (GPU 256, CPU 8) and PRECISION_TIMEOUT (GPU 90).
The training, loss, benchmark and precision processes get HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, TRANSFORMERS_OFFLINE
and VLLM_NO_USAGE_STATS set to 1 (unless set): everything they load is local.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve()
RECIPE = ROOT / "recipes" / "qwen_math_aime.yaml"
ZERO3_CONFIG = ROOT / "launch" / "zero3_1x4.yaml"
BENCHMARK = ROOT / "benchmarks" / "gbpo_vs_grpo.py"
LOSS_PRECISION = ROOT / "benchmarks" / "acceptance_loss.py"
RATIO_PRECISION = ROOT / "benchmarks" / "precision.py"

# gbpo.train keys this script sets; the extra arguments after `--` may not set them.
DRIVER_KEYS = ("model_name_or_path", "max_steps", "report_to", "output_dir", "save_strategy")
# --cpu: fp32 on both sides. The recipe's vllm_max_model_length (4096) stays: with the character-level tokenizer the
# longest AIME prompt is ~1030 tokens, over the 1024 tests/test_vllm.py uses for its first generation batch.
CPU_OVERRIDES = ["--dtype", "float32", "--bf16", "false", "--use_cpu", "true"]
DEFAULTS = {  # per mode; None: the recipe's value (no override); timeouts in seconds, 0: none
    "gpu": {
        "max_completion_length": 512,
        "learning_rate": None,
        "bench_steps": 3,
        "bench_max_completion_length": 256,
        "train_timeout": 300,
        "bench_timeout": 150,
        "precision_max_completion_length": 256,
        "precision_timeout": 90,
    },
    "full": {  # --full: the recipe's completions and the old benchmark
        "max_completion_length": None,
        "learning_rate": None,
        "bench_steps": 4,
        "bench_max_completion_length": 1024,
        "train_timeout": 0,
        "bench_timeout": 0,
        "precision_max_completion_length": 256,
        "precision_timeout": 0,
    },
    "cpu": {
        "max_completion_length": 8,
        "learning_rate": 1e-3,
        "bench_steps": 2,
        "bench_max_completion_length": 8,
        "train_timeout": 0,
        "bench_timeout": 0,
        "precision_max_completion_length": 8,
        "precision_timeout": 0,
    },
}
BENCH_NUM_GENERATIONS = {"gpu": 32, "cpu": 4}
# The GPU default's generation batch: 2 prompts x 64 = 128 rows (the recipe's 8 prompts = 512 rows at once do not fit
# one GPU with transformers generation at 3072 tokens: `python -m gbpo.layout ... --use_vllm false --gpu-memory-gib
# 80` says 119 GiB and names this key). With it, generations run at steps 1 and 4 x 10 / 4 + 1 = 11.
SMALL_GENERATION = ["--prompts_per_generation", "2"]
VLLM_ONE_GPU = ["--vllm_gpu_memory_utilization", "0.3"]  # 0.4 does not fit one 80 GB GPU (gbpo.memory_plan)
# The checks that need a vLLM engine: "not applicable" when the run generates with transformers.
VLLM_CHECKS = (
    "vllm_colocate",
    "weights_synced",
    "importance_sampling_ratio",
    "masked_fraction",
    "vllm_follows_training",
)
NOT_APPLICABLE = "not applicable"

# Thresholds of the checks (module docstring).
IS_MEAN_RANGE = (0.8, 1.25)
FLAT_FACTOR, FLAT_SLACK = 2.0, 1e-3
FLAT_RULE = f"second <= {FLAT_FACTOR:g} x first + {FLAT_SLACK:g}"
MASKED_MAX = {"truncate": 0.0, "mask": 0.05}


def _add_import_paths(*paths: Path) -> None:
    """Make ``paths`` importable (the checkout for gbpo, benchmarks/ for gbpo_vs_grpo, tests/ for tiny), however this
    script was started."""
    for path in paths:
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


# --- the model


def padded_tokenizer(vocab_size: int):
    """tests/tiny.py's character-level chat tokenizer with its vocabulary padded to ``vocab_size`` ids.

    The padding tokens are ``<`` + the id's decimal digits written as letters (0 -> a, ..., 9 -> j) + ``>``: every id
    a model of that vocabulary samples decodes, and no padding token holds a digit or math, so no reward reads an
    answer in them. They are ordinary entries of one BPE vocabulary (no merges) built from a dict, not 150k "added
    tokens", so building, saving and loading the tokenizer takes about a second.
    """
    import string

    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    _add_import_paths(ROOT / "tests")
    from tiny import CHAT_TEMPLATE, SPECIAL

    tokens = SPECIAL + list(dict.fromkeys(string.printable))
    padding = vocab_size - len(tokens)
    tokens += ["<" + "".join(chr(ord("a") + int(d)) for d in str(i)) + ">" for i in range(padding)]
    vocab = {token: i for i, token in enumerate(tokens)}
    assert len(vocab) == vocab_size, "the padding tokens must not repeat a token"
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, ignore_merges=True))
    backend.add_special_tokens(SPECIAL)  # already in the vocabulary at ids 0-2: marked special, no new ids
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|im_end|>", bos_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(model_dir: Path, cpu: bool) -> dict:
    """Save a random-weight model and its tokenizer to ``model_dir`` (replacing what is there); returns its shape."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    _add_import_paths(ROOT, ROOT / "tests", ROOT / "benchmarks")
    shutil.rmtree(model_dir, ignore_errors=True)
    if cpu:
        from tiny import VLLM_SHAPE, save_tiny

        save_tiny(model_dir, **VLLM_SHAPE)
        description = "tests/tiny.py's tiny Qwen2 (VLLM_SHAPE), random weights, fp32, character-level tokenizer"
    else:
        from gbpo_vs_grpo import QWEN25_MATH_15B

        tokenizer = padded_tokenizer(QWEN25_MATH_15B["vocab_size"])
        torch.manual_seed(0)
        config = Qwen2Config(
            **QWEN25_MATH_15B,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        )
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(model_dir)  # safetensors
        tokenizer.save_pretrained(model_dir)
        description = (
            f"Qwen2.5-Math-1.5B's shape, random weights, bf16, {model.num_parameters():,} parameters; "
            f"tokenizer padded to {len(tokenizer):,} ids"
        )
        del model
    config = json.loads((model_dir / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    return {"dir": str(model_dir), "description": description, **{key: config[key] for key in keys}}


# --- the plan


def plan_steps(train_args: list[str]) -> dict:
    """The recipe's batch layout on 1 process, as gbpo.train derives it, and the ``max_steps`` of two generations.

    ``train_args``: the gbpo.train overrides (without ``max_steps``). TRL generates at micro-batch 0 and every
    ``steps_per_generation x num_iterations`` micro-batches; a generation at micro-batch ``m`` runs in optimizer
    step ``m // gradient_accumulation_steps + 1`` (counted from 1), so the second one is in that step for
    ``m = steps_per_generation x num_iterations``, which is ``max_steps``.
    """
    from dataclasses import fields

    _add_import_paths(ROOT)
    from gbpo.config import GBPOConfig
    from gbpo.layout import layout_keys, plan_layout
    from gbpo.recipe import argv_with_config, command_line_keys, user_keys

    argv = argv_with_config([str(RECIPE), *train_args])
    user = user_keys(argv)  # the recipe's keys, then the command line's
    layout = plan_layout(layout_keys(user), 1, fixed=command_line_keys(argv))
    default_iterations = next(f.default for f in fields(GBPOConfig) if f.name == "num_iterations")  # TRL's 1
    num_iterations = user.get("num_iterations", default_iterations)
    every = layout.steps_per_generation * num_iterations  # micro-batches from one generation to the next
    max_steps = every // layout.gradient_accumulation_steps + 1
    return {
        "per_device_train_batch_size": layout.per_device_train_batch_size,
        "gradient_accumulation_steps": layout.gradient_accumulation_steps,
        "steps_per_generation": layout.steps_per_generation,
        "num_iterations": num_iterations,
        "max_steps": max_steps,
        "layout_line": layout.change_line() or f"batch layout for {layout.summary()}: the recipe's keys as written.",
        "max_steps_line": (
            f"{max_steps} = steps_per_generation {layout.steps_per_generation} x num_iterations {num_iterations} / "
            f"gradient_accumulation_steps {layout.gradient_accumulation_steps} + 1: generations at steps 1 and "
            f"{max_steps}"
        ),
    }


def run_mode(cpu: bool, no_vllm: bool, full: bool) -> dict:
    """How the run generates and trains, as the preflight decides it (benchmarks/preflight.py's ``assess``, on what
    imports here): ``generation`` ``"vllm"`` (colocated) or ``"transformers"`` (``use_vllm: false``: with
    ``--no-vllm``, or where vLLM does not import or was built for another torch or device), ``engine`` ``"zero3"``
    (GPU, DeepSpeed imports), ``"accelerate"`` (GPU without DeepSpeed: one plain process) or ``"plain"`` (CPU), and
    ``text``, the mode in words (the verdict names it)."""
    _add_import_paths(ROOT / "benchmarks")
    import preflight

    machine = preflight.read_machine()
    probes = {name: preflight.probe(name) for name in preflight.PACKAGES}
    report = preflight.assess(
        machine,
        probes,
        cpu=cpu,
        no_vllm=no_vllm,
        requirements=preflight.read_requirements(),
        pins=preflight.read_pins(),
    )
    if report.generation == "vllm":
        generation = "vLLM colocated"
    else:
        why = "--no-vllm" if no_vllm else ("vLLM does not import" if not probes["vllm"].imports else "vLLM unusable")
        generation = f"transformers generation ({why})"
    engine = {
        "zero3": "DeepSpeed ZeRO-3",
        "accelerate": "one plain process (DeepSpeed does not import)",
        "plain": "one plain process",
    }[report.engine]
    mode = ("CPU" if cpu else "GPU") + (" --full" if full else "")
    return {"generation": report.generation, "engine": report.engine, "text": f"{mode} mode, {generation}, {engine}"}


def longest_prompt(model_dir: Path, user: dict) -> int:
    """Tokens of the recipe's longest training prompt with the model's tokenizer (the character-level one: ~1,030 for
    AIME)."""
    from transformers import AutoTokenizer

    from gbpo.data import INSTRUCTION, load_benchmark
    from gbpo.kv_cache import longest_prompt_tokens

    dataset = load_benchmark(
        user.get("dataset_name", "arithmetic"),
        levels=user.get("dataset_levels"),
        limit=user.get("dataset_limit"),
        system_prompt=user.get("system_prompt"),
        instruction=user.get("instruction", INSTRUCTION),
    )
    return longest_prompt_tokens(dataset["prompt"], AutoTokenizer.from_pretrained(model_dir))


def estimate_memory(train_args: list[str], model_dir: Path, gpu_memory_gib: float, zero_stage: int) -> dict:
    """`gbpo.memory_plan`'s plan for this run on one GPU of ``gpu_memory_gib`` GiB: the recipe with ``train_args``,
    the model's own config, its longest prompt, and ``zero_stage`` (3 under DeepSpeed, else 0). GiB figures, and the
    printed lines."""
    from gbpo.layout import layout_keys, plan_layout
    from gbpo.memory_plan import GiB, memory_keys, model_shape, plan_memory
    from gbpo.recipe import argv_with_config, command_line_keys, user_keys

    argv = argv_with_config([str(RECIPE), *train_args])
    user = user_keys(argv)
    layout = plan_layout(layout_keys(user), 1, fixed=command_line_keys(argv))
    prompt = longest_prompt(model_dir, user)
    plan = plan_memory(
        memory_keys(user),
        layout,
        model_shape(str(model_dir)),
        gpu_memory_gib,
        zero_stage=zero_stage,
        prompt_tokens=prompt,
    )
    return {
        "gpu_memory_gib": gpu_memory_gib,
        "zero_stage": zero_stage,
        "prompt_tokens": prompt,
        "estimate_gib": plan.total / GiB,
        "training_phase_gib": plan.phases["training"] / GiB,
        "generation_phase_gib": plan.phases["generation"] / GiB,
        "fits": plan.fits,
        "items_gib": {name: size / GiB for name, size, _ in plan.items},
        "lines": plan.lines(),
    }


def memory_against_estimate(cpu: bool, estimate: dict | None, record: dict | None) -> dict:
    """The training process's peak (``torch.cuda.max_memory_allocated``) against the plan's total; "not applicable"
    on CPU."""
    if cpu:
        return {"status": NOT_APPLICABLE, "detail": "CPU mode: no GPU memory to measure or plan"}
    peak = record.get("torch_peak_allocated_gib") if record else None
    if estimate is None or peak is None:
        return {"status": "not measured", "detail": "no training record or no estimate", "estimate": estimate}
    return {
        "status": "measured",
        "peak_allocated_gib": peak,
        "peak_reserved_gib": record.get("torch_peak_reserved_gib"),
        "estimate_gib": estimate["estimate_gib"],
        "peak_over_estimate": peak / estimate["estimate_gib"],
        "estimate": estimate,
    }


def run_limited(command: list[str], env: dict, seconds: int) -> tuple[int, bool]:
    """Run ``command`` in its own process group; past ``seconds`` (0: no limit) send the group SIGTERM, then SIGKILL
    30 s later. Returns ``(exit status, whether the limit stopped it)``."""
    process = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
    try:
        return process.wait(timeout=seconds or None), False
    except subprocess.TimeoutExpired:
        print(f"gpu_acceptance: {seconds} s limit reached, stopping {Path(command[1]).name}", flush=True)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait(), True


def free_port() -> int:
    """A TCP port free now, for the launcher's rendezvous (29500 may be taken)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(cpu: bool) -> dict:
    """The environment of the training and benchmark processes: gbpo from this checkout, nothing from the network,
    and on ``cpu`` no GPU."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS"):
        env.setdefault(key, "1")
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


# --- GPU memory


def nvidia_smi_gpu() -> str:
    """The GPU the training process uses, as nvidia-smi names it: the first of CUDA_VISIBLE_DEVICES, else 0."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip() or "0"


def gpu_memory_now(gpu: str) -> dict | None:
    """``{"used_gib", "total_gib"}`` of ``gpu`` from nvidia-smi; None without nvidia-smi or when it fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", f"--id={gpu}", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"]
    result = subprocess.run(query, capture_output=True, text=True)
    if result.returncode != 0:
        return None
    used, total = (float(value) / 1024 for value in result.stdout.strip().split(","))  # MiB -> GiB
    return {"used_gib": used, "total_gib": total}


def start_memory_poll(gpu: str, path: Path) -> subprocess.Popen | None:
    """nvidia-smi writing ``gpu``'s memory in use (MiB) to ``path`` every 0.5 s; None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", f"--id={gpu}", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "500"]
    with path.open("w") as f:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen(query, stdout=f, stderr=subprocess.DEVNULL)


def stop_memory_poll(poll: subprocess.Popen | None, path: Path) -> float | None:
    """Stop the poll started by `start_memory_poll`; the largest value it wrote, in GiB."""
    if poll is None:
        return None
    poll.terminate()
    poll.wait(timeout=30)
    values = []
    for line in path.read_text().splitlines():
        try:
            values.append(float(line))
        except ValueError:  # "[N/A]", an error line
            pass
    return max(values) / 1024 if values else None


# --- the training process


def instrument(trainer, record: dict) -> None:
    """Time the generation (vLLM's ``generate``, or transformers') and vLLM's ``sync_weights``, and count the
    IS-masked tokens, into ``record``.

    Wraps methods of this trainer object only (no gbpo or TRL code changes): the engine's ``generate`` (tokens and
    seconds per call) and ``sync_weights`` (the global step of each weight push); without an engine, the trainer's
    ``_generate_single_turn`` (TRL's call of transformers' ``generate`` for the process's whole generation batch);
    and the trainer's ``_generate_and_score_completions``, whose output holds the rows that train (vote-N/train-M
    applied): its ``importance_sampling_ratio`` ((B, T), or (B, 1) in the sequence modes) over the loss tokens
    (``completion_mask`` x ``tool_mask``).
    """
    import torch

    engine = getattr(trainer, "vllm_generation", None)
    record["engine_class"] = type(engine).__name__ if engine is not None else None
    if engine is None:  # transformers generation
        single_turn = trainer._generate_single_turn

        def timed_single_turn(*args, **kwargs):
            start = time.perf_counter()
            completion_ids, logprobs = single_turn(*args, **kwargs)
            record["generate_calls"].append(
                {
                    "step": trainer.state.global_step,
                    "seconds": time.perf_counter() - start,
                    "sequences": len(completion_ids),
                    "tokens": sum(len(ids) for ids in completion_ids),
                }
            )
            return completion_ids, logprobs

        trainer._generate_single_turn = timed_single_turn
    else:
        generate, sync_weights = engine.generate, engine.sync_weights

        def timed_generate(*args, **kwargs):
            start = time.perf_counter()
            result = generate(*args, **kwargs)  # (prompt_ids, completion_ids, logprobs, logprob_token_ids)
            completion_ids = result[1]
            record["generate_calls"].append(
                {
                    "step": trainer.state.global_step,
                    "seconds": time.perf_counter() - start,
                    "sequences": len(completion_ids),
                    "tokens": sum(len(ids) for ids in completion_ids),
                }
            )
            return result

        def timed_sync_weights(*args, **kwargs):
            start = time.perf_counter()
            result = sync_weights(*args, **kwargs)
            record["sync_calls"].append({"step": trainer.state.global_step, "seconds": time.perf_counter() - start})
            return result

        engine.generate, engine.sync_weights = timed_generate, timed_sync_weights

    score = trainer._generate_and_score_completions

    def score_and_count_masked(inputs):
        output = score(inputs)
        ratio = output.get("importance_sampling_ratio")
        if trainer.model.training and ratio is not None:
            mask = output["completion_mask"].bool()
            if output.get("tool_mask") is not None:
                mask = mask & output["tool_mask"].bool()
            masked = (ratio == 0).expand_as(mask) & mask
            counts = torch.stack([masked.sum(), mask.sum(), masked.any(dim=1).sum(), mask.any(dim=1).sum()])
            total = trainer.accelerator.reduce(counts.double(), reduction="sum").tolist()  # over processes
            keys = ("masked_tokens", "loss_tokens", "masked_completions", "completions")
            record["is_masking"].append({"step": trainer.state.global_step, **dict(zip(keys, total, strict=True))})
        return output

    trainer._generate_and_score_completions = score_and_count_masked


def worker(record_path: Path, train_argv: list[str]) -> int:
    """The training process: `gbpo.train.main` on ``train_argv``, instrumented (`instrument`); the main process
    writes ``record_path`` (log history, timings, engine, ZeRO stage, PyTorch's GPU memory peaks and the GPU's
    memory), then every process ends ``torch.distributed`` (`gbpo.distributed.shutdown_distributed`, as
    ``gbpo.train``'s command does) before it returns."""
    _add_import_paths(ROOT)
    import torch
    from accelerate import PartialState

    import gbpo.trainer
    from gbpo.distributed import shutdown_distributed
    from gbpo.train import main as train_main

    record = {"generate_calls": [], "sync_calls": [], "is_masking": []}
    trainer_init = gbpo.trainer.GBPOTrainer.__init__

    def init_and_instrument(self, *args, **kwargs):
        trainer_init(self, *args, **kwargs)
        instrument(self, record)

    gbpo.trainer.GBPOTrainer.__init__ = init_and_instrument  # gbpo.train builds its trainer from this class
    trainer = train_main(train_argv)
    state = PartialState()
    if state.is_main_process:
        cuda = torch.cuda.is_available()
        plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
        record.update(
            num_processes=state.num_processes,
            device=torch.cuda.get_device_name(0) if cuda else "CPU",
            use_vllm=trainer.use_vllm,
            vllm_mode=trainer.args.vllm_mode,
            vllm_importance_sampling_correction=trainer.args.vllm_importance_sampling_correction,
            vllm_importance_sampling_mode=trainer.args.vllm_importance_sampling_mode,
            zero_stage=plugin.zero_stage if plugin is not None else None,
            global_step=trainer.state.global_step,
            generation_batch_size=trainer.args.generation_batch_size,
            last_loaded_step=getattr(trainer, "_last_loaded_step", None),
            torch_peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            torch_peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
            torch_total_gib=torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
            log_history=trainer.state.log_history,
        )
        record_path.write_text(json.dumps(record, indent=1))
    shutdown_distributed(trainer)  # after gbpo.train.main's last barrier; ends a colocated vLLM engine first
    return 143 if trainer.preempted else 0


# --- the report


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def train_summary(record: dict) -> dict:
    """The reported quantities (module docstring) from the training process's record."""
    history = record["log_history"]
    steps = [e for e in history if "step_time" in e]  # one entry per optimizer step (the recipe logs every step)
    with_generation = [e for e in steps if "completions/mean_length" in e]  # logged only when a generation ran
    without_generation = [e for e in steps if "completions/mean_length" not in e]
    runtime = next((e["train_runtime"] for e in history if "train_runtime" in e), None)
    tokens = sum(call["tokens"] for call in record["generate_calls"])
    generation_seconds = sum(call["seconds"] for call in record["generate_calls"])
    generations = [
        {
            "step": e["step"],
            "completions_mean_length": e["completions/mean_length"],
            "importance_sampling_ratio_min": e.get("sampling/importance_sampling_ratio/min"),
            "importance_sampling_ratio_mean": e.get("sampling/importance_sampling_ratio/mean"),
            "importance_sampling_ratio_max": e.get("sampling/importance_sampling_ratio/max"),
            "sampling_logp_difference_mean": e.get("sampling/sampling_logp_difference/mean"),
            "sampling_logp_difference_max": e.get("sampling/sampling_logp_difference/max"),
        }
        for e in with_generation
    ]
    with_ratio = [g for g in generations if g["importance_sampling_ratio_mean"] is not None]
    masking = record["is_masking"]
    loss_tokens = sum(m["loss_tokens"] for m in masking)
    completions = sum(m["completions"] for m in masking)
    return {
        "global_step": record["global_step"],
        "steps_logged": len(steps),
        "generation_steps": [g["step"] for g in generations],
        "sync_steps": [call["step"] for call in record["sync_calls"]],
        "generated_tokens": tokens,
        "train_runtime_seconds": runtime,
        "tokens_per_second": tokens / runtime if runtime else None,
        "generation_seconds": generation_seconds,
        "generation_tokens_per_second": tokens / generation_seconds if generation_seconds else None,
        "seconds_per_step": _mean([e["step_time"] for e in steps]),
        "seconds_per_step_with_generation": _mean([e["step_time"] for e in with_generation]),
        "seconds_per_step_without_generation": _mean([e["step_time"] for e in without_generation]),
        "importance_sampling_ratio": {
            "min": min(g["importance_sampling_ratio_min"] for g in with_ratio) if with_ratio else None,
            "mean": _mean([g["importance_sampling_ratio_mean"] for g in with_ratio]),
            "max": max(g["importance_sampling_ratio_max"] for g in with_ratio) if with_ratio else None,
        },
        "masked_token_fraction": sum(m["masked_tokens"] for m in masking) / loss_tokens if loss_tokens else None,
        "masked_completion_fraction": (
            sum(m["masked_completions"] for m in masking) / completions if completions else None
        ),
        "generations": generations,
    }


def logp_difference(summary: dict) -> dict:
    """The sampling log-prob difference at the first and second generation and whether it stayed flat."""
    values = [g["sampling_logp_difference_mean"] for g in summary.get("generations", [])]
    first, second = (values + [None, None])[:2]
    flat = _finite(first) and _finite(second) and second <= FLAT_FACTOR * first + FLAT_SLACK
    return {"first": first, "second": second, "rule": FLAT_RULE, "flat": flat}


def _check(passed, detail: str) -> dict:
    return {"status": "pass" if passed else "fail", "passed": bool(passed), "detail": detail}


def _not_applicable(detail: str) -> dict:
    """A check this mode cannot run (not a failure): ``passed`` is None."""
    return {"status": NOT_APPLICABLE, "passed": None, "detail": detail}


def vllm_checks(max_steps: int, record: dict, summary: dict) -> dict:
    """The checks on the colocated vLLM engine (module docstring)."""
    checks = {}
    checks["vllm_colocate"] = _check(
        record["use_vllm"] and record["vllm_mode"] == "colocate" and record["engine_class"] is not None,
        f"use_vllm {record['use_vllm']}, vllm_mode {record['vllm_mode']}, engine {record['engine_class']}",
    )
    checks["weights_synced"] = _check(
        max_steps - 1 in summary["sync_steps"],
        f"vLLM weight syncs at global steps {summary['sync_steps']}; the second generation needs one at "
        f"{max_steps - 1}",
    )
    keys = ("importance_sampling_ratio_min", "importance_sampling_ratio_mean", "importance_sampling_ratio_max")
    ratios = [tuple(g[key] for key in keys) for g in summary["generations"]]  # (min, mean, max) per generation
    low, high = IS_MEAN_RANGE
    checks["importance_sampling_ratio"] = _check(
        len(ratios) == 2 and all(all(map(_finite, r)) and low <= r[1] <= high for r in ratios),
        f"(min, mean, max) per generation {ratios}; each mean must be in [{low}, {high}]",
    )
    is_mode = record["vllm_importance_sampling_mode"]
    limit = MASKED_MAX["truncate" if is_mode.endswith("truncate") else "mask"]
    fraction = summary["masked_token_fraction"]
    checks["masked_fraction"] = _check(
        fraction is not None and fraction <= limit,
        f"{fraction} of the loss tokens have IS ratio 0 ({is_mode}: at most {limit})",
    )
    difference = logp_difference(summary)
    checks["vllm_follows_training"] = _check(
        difference["flat"],
        f"sampling log-prob difference {difference['first']} at the first generation, {difference['second']} at "
        f"the second; flat means {FLAT_RULE}",
    )
    return checks


def training_checks(
    mode: str, max_steps: int, record: dict, summary: dict, generation: str = "vllm", engine: str = "zero3"
) -> dict:
    """The checks on the training run (module docstring), each ``{"status", "passed", "detail"}``: with
    ``generation`` ``"transformers"`` the vLLM checks are "not applicable" and ``transformers_generation`` replaces
    them; on the GPU without DeepSpeed (``engine`` ``"accelerate"``) ``zero3`` is "not applicable"."""
    checks = {}
    if generation == "vllm":
        checks.update(vllm_checks(max_steps, record, summary))
    else:
        calls = record["generate_calls"]
        checks["transformers_generation"] = _check(
            not record["use_vllm"]
            and record["engine_class"] is None
            and len(calls) == 2
            and all(c["tokens"] for c in calls),
            f"use_vllm {record['use_vllm']}, engine {record['engine_class']}, transformers generate calls "
            f"{[(c['sequences'], c['tokens']) for c in calls]} (sequences, tokens); expected 2 with tokens",
        )
        why = "transformers generation (use_vllm false): no vLLM engine"
        checks.update({name: _not_applicable(why) for name in VLLM_CHECKS})
    if mode == "gpu":
        checks["zero3"] = (
            _check(record["zero_stage"] == 3, f"DeepSpeed ZeRO stage {record['zero_stage']}")
            if engine == "zero3"
            else _not_applicable("DeepSpeed does not import: one plain process, no ZeRO")
        )
    checks["all_steps"] = _check(
        record["global_step"] == max_steps and summary["steps_logged"] == max_steps,
        f"{record['global_step']} steps trained, {summary['steps_logged']} logged, of max_steps {max_steps}",
    )
    checks["two_generations"] = _check(
        summary["generation_steps"] == [1, max_steps],
        f"generations logged at steps {summary['generation_steps']}, expected [1, {max_steps}]",
    )
    return checks


TRAINING_CHECKS = ("zero3", "all_steps", "two_generations")


def acceptance_checks(
    mode: str,
    max_steps: int,
    train_returncode: int,
    record: dict | None,
    bench_returncode: int,
    bench: dict | None,
    *,
    generation: str = "vllm",
    engine: str = "zero3",
    loss: dict | None = None,
) -> dict:
    """Every check (module docstring); a training check that cannot be evaluated (no record) fails, except the ones
    this mode does not run ("not applicable"). ``loss``: acceptance_loss.py's result (None: not measured, a failure)."""
    checks = {
        "training_ran": _check(
            train_returncode == 0 and record is not None,
            f"gbpo.train exit status {train_returncode}; training record {'written' if record else 'missing'}",
        )
    }
    if record is not None:
        checks.update(training_checks(mode, max_steps, record, train_summary(record), generation, engine))
    else:
        names = [*(VLLM_CHECKS if generation == "vllm" else ("transformers_generation",)), *TRAINING_CHECKS]
        checks.update({name: _check(False, "no training record") for name in names if mode == "gpu" or name != "zero3"})
        if generation != "vllm":
            why = "transformers generation (use_vllm false): no vLLM engine"
            checks.update({name: _not_applicable(why) for name in VLLM_CHECKS})
        if mode == "gpu" and engine != "zero3":
            checks["zero3"] = _not_applicable("DeepSpeed does not import: one plain process, no ZeRO")
    checks["loss_precision"] = _check(
        loss is not None and loss["passed"],
        (
            f"GBPO loss on a fixed batch: bf16 on {loss['device']} {loss['loss_bf16']:.6g}, fp32 on the CPU "
            f"{loss['loss_fp32_cpu']:.6g}, relative difference {loss['relative_difference']:.3g} ({loss['rule']})"
            if loss
            else "not measured (acceptance_loss.py failed)"
        ),
    )
    kinds = [r["kind"] for r in bench["results"]] if bench else []
    ratio = bench["ratio"] if bench else None
    checks["benchmark"] = _check(
        bench_returncode == 0 and kinds == ["gbpo", "grpo"] and _finite(ratio),
        f"gbpo_vs_grpo.py exit status {bench_returncode}, kinds {kinds}, GBPO/GRPO step-time ratio {ratio}",
    )
    return checks


def verdict(checks: dict, mode_text: str) -> str:
    """One line: PASS or FAIL, the mode, and how many checks passed, failed and were not applicable."""
    counts = {
        status: sum(c["status"] == status for c in checks.values()) for status in ("pass", "fail", NOT_APPLICABLE)
    }
    failed = [name for name, c in checks.items() if c["status"] == "fail"]
    head = "PASS" if not failed else "FAIL (" + ", ".join(failed) + ")"
    return (
        f"{head}: {mode_text}; {counts['pass']} passed, {counts['fail']} failed, {counts[NOT_APPLICABLE]} not "
        "applicable"
    )


# --- main


def make_parser() -> argparse.ArgumentParser:
    def env(name):
        return os.environ.get(name) or None  # argparse converts a string default with `type`

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny model, no DeepSpeed: minutes, for CI")
    parser.add_argument("--no-vllm", action="store_true", help="generate with transformers (use_vllm false)")
    parser.add_argument("--full", action="store_true", help="GPU: the recipe's 3072-token completions and layout")
    parser.add_argument("--dry-run", action="store_true", help="build the model, print the plan, train nothing")
    parser.add_argument("--out", type=Path, default=env("OUT") or "/tmp/gbpo_acceptance", help="env OUT")
    parser.add_argument(
        "--max-completion-length",
        type=int,
        default=env("MAX_COMPLETION_LENGTH"),
        help="training completions (env MAX_COMPLETION_LENGTH; default GPU 512, --full the recipe's 3072, CPU 8)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=env("LEARNING_RATE"),
        help="env LEARNING_RATE; default the recipe's 5e-7, CPU 1e-3",
    )
    parser.add_argument(
        "--bench-steps", type=int, default=env("BENCH_STEPS"), help="env BENCH_STEPS; GPU 3, --full 4, CPU 2"
    )
    parser.add_argument(
        "--bench-max-completion-length",
        type=int,
        default=env("BENCH_MAX_COMPLETION_LENGTH"),
        help="env BENCH_MAX_COMPLETION_LENGTH; GPU 256, --full 1024, CPU 8",
    )
    parser.add_argument(
        "--train-timeout",
        type=int,
        default=env("TRAIN_TIMEOUT"),
        help="seconds, 0 none (env TRAIN_TIMEOUT; GPU 300, else none)",
    )
    parser.add_argument(
        "--bench-timeout",
        type=int,
        default=env("BENCH_TIMEOUT"),
        help="seconds, 0 none (env BENCH_TIMEOUT; GPU 150, else none)",
    )
    parser.add_argument(
        "--precision-max-completion-length",
        type=int,
        default=env("PRECISION_MAX_COMPLETION_LENGTH"),
        help="benchmarks/precision.py's completions (env PRECISION_MAX_COMPLETION_LENGTH; GPU 256, CPU 8)",
    )
    parser.add_argument(
        "--precision-timeout",
        type=int,
        default=env("PRECISION_TIMEOUT"),
        help="seconds, 0 none (env PRECISION_TIMEOUT; GPU 90, else none)",
    )
    return parser


def train_overrides(args, model_dir: Path, train_dir: Path, generation: str) -> list[str]:
    """The gbpo.train keys this script sets for the mode (module docstring)."""
    overrides = ["--model_name_or_path", str(model_dir), "--report_to", "none", "--output_dir", str(train_dir)]
    overrides += ["--save_strategy", "no"]
    if args.cpu:
        overrides += CPU_OVERRIDES
    if generation == "transformers":
        overrides += ["--use_vllm", "false"]
    elif not args.cpu:
        overrides += VLLM_ONE_GPU
    if generation == "transformers" or not (args.cpu or args.full):
        overrides += SMALL_GENERATION
    if args.max_completion_length is not None:
        overrides += ["--max_completion_length", str(args.max_completion_length)]
    if args.learning_rate is not None:
        overrides += ["--learning_rate", str(args.learning_rate)]
    return overrides


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:  # the training process: _worker RECORD.json RECIPE [--key value ...]
        return worker(Path(argv[1]), argv[2:])
    extra = []
    if "--" in argv:  # gbpo.train keys after `--`
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = make_parser()
    args = parser.parse_args(argv)
    taken = [key for key in DRIVER_KEYS if any(a[2:].partition("=")[0] == key for a in extra if a.startswith("--"))]
    if taken:
        parser.error(f"{', '.join(taken)} after `--`: this script sets them")
    if args.full and args.cpu:
        parser.error("--full is for the GPU mode")
    mode = "cpu" if args.cpu else "gpu"
    for key, default in DEFAULTS["full" if args.full else mode].items():
        if getattr(args, key) is None:
            setattr(args, key, default)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_dir, train_dir = out / "model", out / "train"
    record_path, bench_path, report_path = out / "train_record.json", out / "gbpo_vs_grpo.json", out / "acceptance.json"
    loss_path, precision_path = out / "loss_precision.json", out / "precision.json"

    run = run_mode(args.cpu, args.no_vllm, args.full)
    print(f"gpu_acceptance ({run['text']}): building the model in {model_dir}", flush=True)
    model = build_model(model_dir, args.cpu)
    overrides = train_overrides(args, model_dir, train_dir, run["generation"])
    plan = plan_steps([*overrides, *extra])
    train_argv = [str(RECIPE), *overrides, "--max_steps", str(plan["max_steps"]), *extra]
    if run["engine"] == "zero3":
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO3_CONFIG)]
        launcher += ["--num_processes", "1", "--main_process_port", str(free_port())]
    else:  # one plain process (CPU, or a GPU without DeepSpeed)
        launcher = [sys.executable]
    train_command = [*launcher, str(DRIVER), "_worker", str(record_path), *train_argv]
    bench_command = [sys.executable, str(BENCHMARK), *(["--tiny"] if args.cpu else [])]
    bench_command += ["--steps", str(args.bench_steps), "--num-generations", str(BENCH_NUM_GENERATIONS[mode])]
    bench_command += ["--max-completion-length", str(args.bench_max_completion_length), "--output", str(bench_path)]
    loss_command = [sys.executable, str(LOSS_PRECISION), str(model_dir), str(loss_path)]
    loss_command += ["--device", "cpu" if args.cpu else "cuda"]
    precision_command = [sys.executable, str(RATIO_PRECISION), "--recipe", str(RECIPE), "--model", str(model_dir)]
    precision_command += ["--prompts", "1", "--max-completion-length", str(args.precision_max_completion_length)]
    precision_command += ["--output", str(precision_path)]
    zero_stage = 3 if run["engine"] == "zero3" else 0
    gpu = nvidia_smi_gpu()
    memory_before = None if args.cpu else gpu_memory_now(gpu)
    estimate = None
    if not args.cpu:
        gpu_gib = memory_before["total_gib"] if memory_before else 80.0
        estimate = estimate_memory([*overrides, *extra], model_dir, gpu_gib, zero_stage)

    print(f"mode: {run['text']}")
    print(f"model: {model['description']}")
    print(f"layout: {plan['layout_line']}")
    print(f"max_steps: {plan['max_steps_line']}")
    if estimate is not None:
        nominal = "" if memory_before else " (no GPU visible: a nominal 80 GiB)"
        print(f"memory plan{nominal}:\n" + "\n".join(estimate["lines"]))
    print(f"train: {shlex.join(train_command)}")
    print(f"loss precision: {shlex.join(loss_command)}")
    print(f"benchmark: {shlex.join(bench_command)}")
    print(f"precision: {shlex.join(precision_command)}")
    print(f"report: {report_path}", flush=True)
    if args.dry_run:
        print("dry run: nothing trained")
        return 0

    # nothing from an earlier run is read as this run's
    for path in (record_path, bench_path, report_path, loss_path, precision_path):
        path.unlink(missing_ok=True)
    shutil.rmtree(train_dir, ignore_errors=True)  # gbpo.train refuses an output_dir that holds a run
    env = child_env(args.cpu)
    poll = None if args.cpu else start_memory_poll(gpu, out / "gpu_memory_mib.txt")
    start = time.perf_counter()
    train_returncode, train_stopped = run_limited(train_command, env, args.train_timeout)
    train_wall = time.perf_counter() - start
    peak_polled = stop_memory_poll(poll, out / "gpu_memory_mib.txt")
    record = json.loads(record_path.read_text()) if record_path.is_file() else None

    print(f"gpu_acceptance: training exited with status {train_returncode}; loss precision next", flush=True)
    loss_returncode = subprocess.run(loss_command, env=env, cwd=ROOT).returncode
    loss = json.loads(loss_path.read_text()) if loss_returncode == 0 and loss_path.is_file() else None
    print("gpu_acceptance: benchmark next", flush=True)
    start = time.perf_counter()
    bench_returncode, bench_stopped = run_limited(bench_command, env, args.bench_timeout)
    bench_wall = time.perf_counter() - start
    bench = json.loads(bench_path.read_text()) if bench_path.is_file() else None

    summary = train_summary(record) if record is not None else {}
    checks = acceptance_checks(
        mode,
        plan["max_steps"],
        train_returncode,
        record,
        bench_returncode,
        bench,
        generation=run["generation"],
        engine=run["engine"],
        loss=loss,
    )
    torch_reserved = record["torch_peak_reserved_gib"] if record else None
    passed = all(check["status"] != "fail" for check in checks.values())
    report = {
        "mode": mode,
        "generation": run["generation"],
        "engine": run["engine"],
        "mode_text": run["text"],
        "verdict": verdict(checks, run["text"]),
        "passed": passed,
        "checks": checks,
        "device": record["device"] if record else None,
        "peak_gpu_memory_gib": None if args.cpu else (peak_polled if peak_polled is not None else torch_reserved),
        "memory_against_estimate": memory_against_estimate(args.cpu, estimate, record),
        "loss_precision": loss,
        "tokens_per_second": summary.get("tokens_per_second"),
        "generation_tokens_per_second": summary.get("generation_tokens_per_second"),
        "seconds_per_step": summary.get("seconds_per_step"),
        "importance_sampling_ratio": summary.get("importance_sampling_ratio"),
        "masked_token_fraction": summary.get("masked_token_fraction"),
        "masked_completion_fraction": summary.get("masked_completion_fraction"),
        "sampling_logp_difference": logp_difference(summary),
        "model": model,
        "layout": {key: value for key, value in plan.items() if not key.endswith("_line")},
        "train": {
            "command": train_command,
            "returncode": train_returncode,
            "stopped_at_limit_seconds": args.train_timeout if train_stopped else None,
            "wall_seconds": train_wall,
            "record": str(record_path),
            "gpu_memory": {
                "peak_gib_nvidia_smi": peak_polled,
                "before_gib": memory_before["used_gib"] if memory_before else None,
                "total_gib": memory_before["total_gib"] if memory_before else None,
                "torch_peak_allocated_gib": record["torch_peak_allocated_gib"] if record else None,
                "torch_peak_reserved_gib": torch_reserved,
            },
            **summary,
        },
        "benchmark": {  # benchmarks/gbpo_vs_grpo.py's JSON: per trainer (gbpo, grpo) and their step-time ratio
            "command": bench_command,
            "returncode": bench_returncode,
            "stopped_at_limit_seconds": args.bench_timeout if bench_stopped else None,
            "wall_seconds": bench_wall,
            "results": bench["results"] if bench else None,
            "ratio": bench["ratio"] if bench else None,
        },
    }
    report_path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    for name, check in checks.items():
        label = {"pass": "PASS", "fail": "FAIL", NOT_APPLICABLE: "N/A "}[check["status"]]
        print(f"{label} {name}: {check['detail']}")
    outcome = "all checks passed" if passed else "FAILED"
    print(f"gpu_acceptance: {outcome}. {report['verdict']}; report in {report_path}", flush=True)

    print("gpu_acceptance: the ratio in each precision next (benchmarks/precision.py; not a check)", flush=True)
    start = time.perf_counter()
    precision_returncode, precision_stopped = run_limited(precision_command, env, args.precision_timeout)
    report["precision"] = {
        "command": precision_command,
        "returncode": precision_returncode,
        "stopped_at_limit_seconds": args.precision_timeout if precision_stopped else None,
        "wall_seconds": time.perf_counter() - start,
        "results": json.loads(precision_path.read_text()) if precision_path.is_file() else None,
    }
    report_path.write_text(json.dumps(report, indent=2))
    print(f"gpu_acceptance: {outcome}. {report['verdict']}; report (with precision) in {report_path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
