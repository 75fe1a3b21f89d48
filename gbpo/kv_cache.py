"""The KV cache a vLLM engine on a CPU needs for one job, sized from the job instead of the machine's RAM.

vLLM's CPU backend otherwise takes a fraction of the machine's RAM (``gpu_memory_utilization``, 0.92 for
``vllm.LLM``, and it refuses to start when less than that is free) or a fixed ``VLLM_CPU_KVCACHE_SPACE`` in whole
GiB. A job knows better: at most ``max_num_seqs`` sequences run at once (vLLM's scheduler holds the rest back), none
longer than its longest prompt plus its completion budget. PagedAttention (Kwon et al. 2023, arXiv 2309.06180)
stores each sequence in whole blocks of ``block_size`` tokens, so the cache is

    blocks = ceil(max_num_seqs * ceil(max_seq_len / block_size) * margin) + 1
    bytes  = blocks * block_size * kv_bytes_per_token

with ``kv_bytes_per_token = num_hidden_layers * 2 (K and V) * num_key_value_heads * head_dim * dtype bytes`` and
the one block vLLM's block pool keeps back (its null block). The engine gets it as ``kv_cache_memory_bytes``
(vLLM engine arguments, https://docs.vllm.ai/en/latest/configuration/engine_args.html: "ignores
gpu_memory_utilization"), and ``max_model_len=-1`` (same page: the longest context that fits in that cache) unless
a ``max_model_len`` is given, in which case the cache also holds one sequence of that length. A user's
``VLLM_CPU_KVCACHE_SPACE`` (GiB, https://docs.vllm.ai/en/latest/getting_started/installation/cpu.html) wins:
vLLM's CPU platform turns it into ``kv_cache_memory_bytes`` over whatever the engine was given.

Too small a cache is slower, never wrong: vLLM admits fewer sequences at once and preempts (recomputes) a running
one when a block is missing. Too large a cache is memory the job never touches, and on a laptop memory it cannot
spare.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

__all__ = [
    "CPU_BLOCK_SIZE",
    "KV_CACHE_MARGIN",
    "cpu_kv_cache_options",
    "dtype_bytes",
    "fit_engine_to_prompts",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "longest_prompt_tokens",
    "user_kv_cache_line",
]

# vLLM's CPU platform sets block_size 128 unless the user sets one (vllm/platforms/cpu.py; MLA models use 16).
CPU_BLOCK_SIZE = 128
# 25% more blocks than the job's sequences fill: prompts longer than the measured longest one (a benchmark added
# later, another instruction, a chat template's BOS) still run all sequences at once instead of being preempted. At
# the CPU default's size (0.45 GiB) the spare quarter costs ~0.1 GiB.
KV_CACHE_MARGIN = 1.25
ENV_KEY = "VLLM_CPU_KVCACHE_SPACE"
GiB = 1 << 30

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def dtype_bytes(dtype: str) -> int:
    """Bytes per KV cache element for a vLLM ``dtype`` (the KV cache takes the engine's dtype on a CPU).

    ``"auto"`` counts 4 bytes: vLLM's choice depends on the model and the CPU (bf16 for an fp32 model on a CPU build),
    so the cache is sized for the widest case, at most twice what a bf16 engine uses.

    Raises:
        ValueError: a dtype other than ``auto``, ``float32``, ``bfloat16``, ``float16``.
    """
    if dtype == "auto":
        return 4
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"Unknown vLLM dtype {dtype!r}: expected one of auto, {', '.join(_DTYPE_BYTES)}.")
    return _DTYPE_BYTES[dtype]


def kv_bytes_per_token(config: Any, dtype: str) -> int:
    """KV cache bytes one token takes over all layers: ``layers * 2 * kv_heads * head_dim * dtype_bytes(dtype)``.

    Args:
        config: a transformers ``PretrainedConfig`` (its ``get_text_config()`` for a multimodal model): reads
            ``num_hidden_layers``, ``num_key_value_heads`` (default ``num_attention_heads``, i.e. multi-head
            attention) and ``head_dim`` (default ``hidden_size // num_attention_heads``).
        dtype: the engine's dtype (see :func:`dtype_bytes`).

    Returns:
        Bytes per token. For grouped-query or multi-head attention this is exact; other layouts (MLA's latent cache,
        sliding-window layers) need less, so they are over-estimated.

    Raises:
        ValueError: the config lacks ``num_hidden_layers`` or ``num_attention_heads``, or an unknown dtype.
    """
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if not layers or not heads:
        raise ValueError(
            f"The model config ({type(config).__name__}) has no num_hidden_layers/num_attention_heads, so its KV cache "
            f"cannot be sized: set {ENV_KEY} (GiB) for vLLM's CPU backend."
        )
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers * 2 * kv_heads * head_dim * dtype_bytes(dtype)


def kv_cache_bytes(
    config: Any,
    *,
    dtype: str,
    max_num_seqs: int,
    max_seq_len: int,
    max_model_len: int | None = None,
    block_size: int = CPU_BLOCK_SIZE,
    margin: float = KV_CACHE_MARGIN,
) -> int:
    """Bytes of KV cache for ``max_num_seqs`` sequences of up to ``max_seq_len`` tokens at once (module docstring).

    Args:
        config, dtype: the model's transformers config and the engine's dtype (:func:`kv_bytes_per_token`).
        max_num_seqs: sequences vLLM runs at once (its ``max_num_seqs``), >= 1.
        max_seq_len: tokens of the longest sequence, prompt and completion, >= 1.
        max_model_len: the engine's ``max_model_len`` when one is set; the cache then also holds one sequence of that
            length, as vLLM checks at start-up. None: the engine fits ``max_model_len`` to the cache itself.
        block_size: vLLM's KV block, in tokens (128 on a CPU).
        margin: spare blocks as a factor (>= 1) on the job's blocks.

    Returns:
        Bytes, a whole number of blocks.

    Raises:
        ValueError: a count below 1 or a margin below 1 (naming the argument), or a config that cannot be sized.
    """
    for name, value in (("max_num_seqs", max_num_seqs), ("max_seq_len", max_seq_len), ("block_size", block_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    if max_model_len is not None and max_model_len < 1:
        raise ValueError(f"max_model_len must be >= 1 or None, got {max_model_len!r}.")
    if margin < 1:
        raise ValueError(f"margin must be >= 1, got {margin!r}.")
    blocks = math.ceil(max_num_seqs * math.ceil(max_seq_len / block_size) * margin)
    if max_model_len is not None:
        blocks = max(blocks, math.ceil(max_model_len / block_size))
    return (blocks + 1) * block_size * kv_bytes_per_token(config, dtype)


def longest_prompt_tokens(prompts: Sequence[Any], tokenizer: Any, **chat_template_kwargs) -> int:
    """Tokens of the longest prompt, tokenized as TRL's `GRPOTrainer` tokenizes prompts for generation.

    Conversational prompts (lists of ``{"role", "content"}`` messages) go through the tokenizer's chat template with
    the generation prompt (``apply_chat_template(..., add_generation_prompt=True, tokenize=True)``), plain strings
    through the tokenizer (with its special tokens).

    Raises:
        ValueError: no prompts.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("No prompts to measure: the dataset is empty.")
    if isinstance(prompts[0], str):
        ids = tokenizer(text=prompts)["input_ids"]
    else:
        ids = tokenizer.apply_chat_template(
            [list(p) for p in prompts],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            **chat_template_kwargs,
        )["input_ids"]
    return max(len(x) for x in ids)


def user_kv_cache_line(environ: dict | None = None) -> str | None:
    """The log line for a KV cache size the user set in ``VLLM_CPU_KVCACHE_SPACE`` (GiB), or None when unset."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_KEY, "") == "":
        return None
    return f"vLLM KV cache: {environ[ENV_KEY]} GiB ({ENV_KEY} is set)."


def cpu_kv_cache_options(
    config: Any,
    *,
    dtype: str,
    max_num_seqs: int,
    max_seq_len: int,
    max_model_len: int | None = None,
    environ: dict | None = None,
) -> tuple[dict, str]:
    """The ``vllm.LLM`` keyword arguments that size a CPU engine's KV cache from the job, and one log line.

    Args:
        config, dtype, max_num_seqs, max_seq_len, max_model_len: as :func:`kv_cache_bytes`; ``max_model_len`` is the
            one the engine is built with (None: vLLM's own, which this fits to the cache).
        environ: the environment to read ``VLLM_CPU_KVCACHE_SPACE`` from (default ``os.environ``).

    Returns:
        ``(options, line)``. ``options`` is ``{"kv_cache_memory_bytes": bytes}`` plus ``{"max_model_len": -1}`` when
        ``max_model_len`` is None; empty when the environment sets ``VLLM_CPU_KVCACHE_SPACE`` (the user's size wins,
        and vLLM's CPU platform would override the bytes with it anyway).

    Raises:
        ValueError: as :func:`kv_cache_bytes`.
    """
    user = user_kv_cache_line(environ)
    if user is not None:
        return {}, user
    size = kv_cache_bytes(
        config, dtype=dtype, max_num_seqs=max_num_seqs, max_seq_len=max_seq_len, max_model_len=max_model_len
    )
    options = {"kv_cache_memory_bytes": size}
    if max_model_len is None:
        options["max_model_len"] = -1
    line = (
        f"vLLM KV cache: {size / GiB:.2f} GiB for {max_num_seqs} sequences at once of up to {max_seq_len} tokens "
        f"({kv_bytes_per_token(config, dtype)} bytes per token in {dtype}, blocks of {CPU_BLOCK_SIZE} tokens, "
        f"x{KV_CACHE_MARGIN} spare; set {ENV_KEY} in GiB to override)."
    )
    return options, line


def fit_engine_to_prompts(args, tokenizer, datasets: list) -> None:
    """Set ``args.vllm_max_prompt_tokens`` (a `GBPOConfig`; unless set) to the longest prompt of ``datasets`` (each
    with a ``prompt`` column), in tokens.

    The in-training evaluation generates with the trainer's colocated engine, whose KV cache on a CPU build is sized
    for the longest prompt (`gbpo.vllm_cpu.colocated_kv_cache_options`); the trainer alone sees only the training
    prompts.
    """
    if args.vllm_max_prompt_tokens is None:
        template_kwargs = args.chat_template_kwargs or {}
        args.vllm_max_prompt_tokens = max(
            longest_prompt_tokens(d["prompt"], tokenizer, **template_kwargs) for d in datasets
        )
