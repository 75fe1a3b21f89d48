"""Loading a model for evaluation: a short id, hub id, directory or PEFT adapter (merged), with transformers or vLLM."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

__all__ = ["load_model"]

logger = logging.getLogger(__name__)


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

    from ..models import resolve_model

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


def _load_vllm(
    path: str,
    *,
    seed: int,
    dtype: str,
    prompts: list | None = None,
    max_new_tokens: int | None = None,
    max_num_seqs: int | None = None,
):
    """``(vllm.LLM, tokenizer)`` for ``path``; a PEFT adapter is merged into a temporary directory first.

    ``seed`` seeds the engine (vLLM's CPU backend cannot seed single requests). Without CUDA, vLLM runs in this
    process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless the environment sets it), as its CPU backend needs.

    On a CPU build of vLLM the engine runs at most ``max_num_seqs`` sequences at once and its KV cache is sized for
    them (`gbpo.kv_cache.cpu_kv_cache_options`): each up to the longest of ``prompts`` plus ``max_new_tokens``
    tokens, where vLLM would take 92% of the machine's RAM (and refuse to start with less free). A
    ``VLLM_CPU_KVCACHE_SPACE`` (GiB) in the environment still wins. On a GPU the engine keeps vLLM's sizing.

    Raises:
        ValueError: on a CPU build, ``prompts``, ``max_new_tokens`` or ``max_num_seqs`` missing.
    """
    import os

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import vllm
    from transformers import AutoConfig, AutoTokenizer
    from vllm.platforms import current_platform

    adapter = Path(path).expanduser() / "adapter_config.json"
    if adapter.is_file():
        merged, tokenizer, _ = load_model(path, dtype="float32" if dtype == "auto" else dtype, device="cpu")
        tmp = tempfile.mkdtemp(prefix="gbpo-merged-")
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del merged
        path = tmp
    tokenizer = AutoTokenizer.from_pretrained(path)
    options = {}
    if current_platform.is_cpu():
        from ..kv_cache import cpu_kv_cache_options, longest_prompt_tokens

        if not prompts or max_new_tokens is None or max_num_seqs is None:
            raise ValueError(
                "vLLM on a CPU sizes its KV cache from the job: pass prompts, max_new_tokens, max_num_seqs."
            )
        options, line = cpu_kv_cache_options(
            AutoConfig.from_pretrained(path),
            dtype=dtype,
            max_num_seqs=max_num_seqs,
            max_seq_len=longest_prompt_tokens(prompts, tokenizer) + max_new_tokens,
        )
        options["max_num_seqs"] = max_num_seqs
        logger.info(line)
    return vllm.LLM(model=path, seed=seed, dtype=dtype, **options), tokenizer
