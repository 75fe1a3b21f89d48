"""``dtype: auto`` on a CPU: train and generate in bf16 only where this CPU's bf16 matmuls are clearly faster.

CPUs differ by more than an order of magnitude in bf16. With AMX (Intel Sapphire Rapids and later) bf16 matmuls run
~11x faster than fp32; without AMX or AVX512-BF16 (e.g. this project's AMD EPYC machines) PyTorch falls back to
slow conversions and bf16 runs 50-100x slower in a one-core matmul, ~4x slower end-to-end in vLLM's generation (README).
A recipe that hard-codes either is wrong on the other machine, so `gbpo.train` with ``dtype: auto`` and
``use_cpu: true`` times a few matmuls (:func:`probe_matmul_speed`, well under a second) and picks (:func:`choose`):

* **mixed** where bf16 is fast: vLLM generates in bf16 (``vllm_dtype: bfloat16``, where most of a step's time goes)
  and TRL's importance-sampling correction (``vllm_importance_sampling_correction: true``,
  https://huggingface.co/docs/trl/grpo_trainer) corrects for the bf16 sampler's mismatch with the trained policy,
  while the trainer computes log-probs and trains in fp32 (``dtype: float32``, ``bf16: false``);
* **fp32** otherwise: ``dtype: float32``, ``bf16: false``, ``vllm_dtype: float32``.

``auto`` does not choose bf16 training (``bf16: true``, autocast) on speed alone: the trust region measures the
policy's change through the ratio of two log-prob passes, and in bf16 one optimizer step at the recipes' learning rates
moves the ratio mostly by rounding (benchmarks/precision.py: mean ``|log rho|`` 10x fp32's after one step at
``lr 2e-6``; docs/algorithm.md, "Precision and the trust region"). It would only once runs show that bf16 training
learns as well: the 3-seed runs of docs/precision (README, "Precision on a CPU") decide no difference either way, and
bf16 put several times as many tokens outside the bounds. ``bf16: true`` or ``dtype: bfloat16`` still choose it.

Every one of these keys the recipe or the command line sets explicitly is kept (:func:`resolve_auto_dtype`). An
explicit ``dtype`` (``float32``, ``bfloat16``, ``float16``) on a CPU is the precision of the whole run: ``bf16`` and
``vllm_dtype``, unless set, follow it (:func:`explicit_dtype_keys`), where TRL would turn ``bf16`` (autocast) on by
default.
Sources: PyTorch's CPU autocast (https://pytorch.org/docs/stable/amp.html#cpu-op-specific-behavior), Accelerate's
mixed precision (https://huggingface.co/docs/accelerate/usage_guides/low_precision_training).
"""

from __future__ import annotations

import time

__all__ = [
    "MIN_BF16_SPEEDUP",
    "choose",
    "explicit_dtype_keys",
    "probe_matmul_speed",
    "probe_on_main_process",
    "resolve_auto_dtype",
]

# bf16 must be at least this many times faster than fp32 in the probe. The two kinds of CPU sit far on either side
# (~11x with AMX, 0.01-0.02x measured here without it), so the threshold only has to sit clear of timing noise: the
# fastest of several calls still moves by ~1.3x between probes on a busy machine (fp32 64-84 GFLOP/s here). And a
# small bf16 gain does not pay for what bf16 adds: weights cast on every forward pass, the fp32 log-softmax over the
# vocabulary, and a sampler that no longer matches the trained policy.
MIN_BF16_SPEEDUP = 1.5


def probe_matmul_speed(size: int = 256, budget_s: float = 0.15, max_reps: int = 8) -> dict[str, float]:
    """GFLOP/s of one CPU core on ``size x size`` matmuls in fp32 and bf16.

    One thread (torch's thread count is restored afterwards): what decides is the core's instruction set (AMX,
    AVX512-BF16 or neither), which both dtypes scale alike over threads, while a multi-threaded matmul on a busy
    machine waits for its slowest thread. Measured here beside another job on both cores: one thread gave fp32 64-84
    and bf16 0.6-1.3 GFLOP/s (0.01-0.02x) in 0.2 s, two threads 1.3-2.4 and 0.7 (0.3-0.5x).

    Per dtype: one untimed call (oneDNN builds its kernel on the first), then timed calls until ``max_reps`` or
    ``budget_s`` seconds (at least two), and the fastest call counts: a call that another process preempted is only
    slower, so the minimum is the least disturbed measure (as Python's ``timeit`` documentation advises). The inputs
    come from a private generator, so the global RNG is untouched. About ``2 * (2 calls + budget_s)`` seconds.

    Returns:
        ``{"float32": GFLOP/s, "bfloat16": GFLOP/s}``, counting ``2 * size**3`` floating-point operations per call.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {
            str(dtype).removeprefix("torch."): matmul_gflops(dtype, size, max_reps, budget_s)
            for dtype in (torch.float32, torch.bfloat16)
        }
    finally:
        torch.set_num_threads(threads)


def matmul_gflops(dtype, size: int, max_reps: int, budget_s: float) -> float:
    """GFLOP/s of ``torch.mm`` on ``size x size`` matrices of ``dtype`` with torch's current threads: one untimed
    call, then timed calls until ``max_reps`` or ``budget_s`` seconds (at least two), the fastest counting
    (`probe_matmul_speed` says why). Inputs from a private generator seeded 0: the global RNG is untouched."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(a, b)
    times, start = [], time.perf_counter()
    while len(times) < max_reps and (len(times) < 2 or time.perf_counter() - start < budget_s):
        before = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - before)
    return 2 * size**3 / min(times) / 1e9


def choose(speeds: dict[str, float], min_speedup: float = MIN_BF16_SPEEDUP) -> str:
    """``"bfloat16"`` when ``speeds["bfloat16"] >= min_speedup * speeds["float32"]``, else ``"float32"``.

    Raises:
        ValueError: a speed that is missing or not positive.
    """
    for key in ("float32", "bfloat16"):
        if not speeds.get(key, 0) > 0:
            raise ValueError(f"The precision probe needs a positive {key} speed, got {speeds.get(key)!r}.")
    return "bfloat16" if speeds["bfloat16"] >= min_speedup * speeds["float32"] else "float32"


def resolve_auto_dtype(user_keys: dict, speeds: dict[str, float]) -> tuple[dict, str]:
    """The recipe keys ``dtype: auto`` stands for on a CPU, given the probe's speeds, and the one log line.

    Args:
        user_keys: the keys the recipe and the command line set (`gbpo.train`'s), which are kept as set.
        speeds: :func:`probe_matmul_speed`'s result.

    Returns:
        ``(keys, line)``: ``keys`` to set, always ``dtype: float32`` (fp32 weights), then ``bf16: false``,
        ``vllm_dtype`` (``bfloat16`` in the mixed mode) and, in the mixed mode,
        ``vllm_importance_sampling_correction: true``, each left out when ``user_keys`` has it; ``line`` gives the
        mode, why, the measured speeds and the keys kept.

    Raises:
        ValueError: as :func:`choose`.
    """
    choice = choose(speeds)
    wanted = {"dtype": "float32", "bf16": False, "vllm_dtype": choice}
    if choice == "bfloat16":
        wanted["vllm_importance_sampling_correction"] = True
    keys = {k: v for k, v in wanted.items() if k == "dtype" or k not in user_keys}
    kept = [f"{k}: {user_keys[k]}" for k in wanted if k != "dtype" and k in user_keys]
    final = {**user_keys, **keys}
    mode = "mixed" if choice == "bfloat16" else "fp32"
    why = (
        "bf16 generation is faster here; training stays fp32, where the ratio measures the policy's change and not "
        "bf16's rounding (benchmarks/precision.py)"
        if mode == "mixed"
        else "bf16 is not faster here"
    )
    line = (
        f"dtype auto: bf16 matmuls {speeds['bfloat16']:.1f} GFLOP/s, fp32 {speeds['float32']:.1f} GFLOP/s "
        f"({speeds['bfloat16'] / speeds['float32']:.2f}x; bf16 needs >= {MIN_BF16_SPEEDUP}x): {mode} ({why}). "
        f"Training in {'bf16 autocast' if final['bf16'] else 'fp32'} over fp32 weights, generating in "
        f"{final['vllm_dtype']}" + (f"; kept as set: {', '.join(kept)}." if kept else ".")
    )
    return keys, line


def explicit_dtype_keys(user_keys: dict, dtype: str) -> tuple[dict, str]:
    """On a CPU, the keys an explicit ``dtype`` decides when the user did not set them, and the one log line.

    ``bf16`` (autocast) is on only for ``dtype: bfloat16`` (TRL's default would turn it on for any dtype, and over
    fp32 weights on a CPU without AMX that is several times slower), ``vllm_dtype`` is ``dtype``; no probe runs.

    Raises:
        ValueError: ``dtype`` is not ``float32``, ``bfloat16`` or ``float16`` (``auto`` goes to
            :func:`resolve_auto_dtype`).
    """
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}.")
    wanted = {"bf16": dtype == "bfloat16", "vllm_dtype": dtype}
    keys = {k: v for k, v in wanted.items() if k not in user_keys}
    final = {**user_keys, **keys}
    line = f"dtype {dtype} (as set): bf16 {str(final['bf16']).lower()}, vllm_dtype {final['vllm_dtype']}."
    return keys, line


def probe_on_main_process(state) -> dict[str, float]:
    """`probe_matmul_speed` run on the main process of an accelerate ``PartialState`` and sent to the others, so that
    every process trains in the same precision."""
    from accelerate.utils import broadcast_object_list

    speeds = [probe_matmul_speed() if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(speeds, from_process=0)
    return speeds[0]
