"""A memory plan per GPU before the run: what a recipe's training and generation hold on each GPU, against its memory.

``python -m gbpo.layout RECIPE.yaml --num_processes N --gpu-memory-gib M [--zero-stage 3] [--prompt-tokens P]``
prints it after the batch layout (`gbpo.layout`), without building a model, downloading one or touching a GPU. The
model's shape comes from its ``config.json`` when ``model_name_or_path`` is a local directory (or is in the local
Hugging Face cache; nothing is downloaded), else from :data:`KNOWN_SHAPES` (the recipes' models). Every figure is
bytes per GPU, printed in GiB (2**30 bytes):

- **model states** (the trained model's weights, gradients and AdamW states): DeepSpeed's own estimator where
  DeepSpeed is installed, else its formula, written out here: ZeRO-3
  (``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs``, no offload): ``4 x largest layer + 18 x
  params / W`` bytes; ZeRO-1/2 (``stage_1_and_2.estimate_zero2_model_states_mem_needs``): ``2 x params + 18 x params /
  W``; no DeepSpeed (``--zero-stage 0``, plain accelerate): ``4 x params x d`` (weights, gradients and AdamW's two
  states, all in the model's dtype of ``d`` bytes). The largest layer is the module with most parameters of its own
  (DeepSpeed's ``_all_live`` variant counts it so): the embedding, ``vocab x hidden``.
- **reference model** (``beta > 0``, no PEFT): ``params x d``, sharded over ``W`` under ZeRO-3 (TRL's
  ``prepare_deepspeed``), whole otherwise (stage 0).
- **activations** of the larger of two passes: the training micro-batch (``per_device_train_batch_size x M / N``
  trained rows, `gbpo.layout`) and a scoring pass of the old and reference log-probs (no gradient, chunks of
  ``per_device_train_batch_size`` rows). Each row is ``P + max_completion_length`` tokens (``P``:
  ``--prompt-tokens``, default ``vllm_max_prompt_tokens`` or 512, the reference's longest prompt), ``a`` bytes per
  element (2 under bf16/fp16). Per token and decoder layer a layer keeps about ``e = 12 x hidden + 3 x kv_dim + 4 x
  intermediate`` elements for its backward (norm inputs and outputs with their fp32 copies, q/k/v, the attention
  output, SwiGLU's gate, up, activation and product; SDPA keeps no ``T x T`` scores). With gradient checkpointing
  (TRL's default) training holds every layer's input (``layers x tokens x hidden x a``) and one recomputed layer with
  its gradients (``2 x e x tokens x a``); without it, every layer's ``e``. TRL's log-prob head (``add_fused_lm_head``,
  trl/trainer/utils.py; ``ChunkedLogProbFunction``, trl/kernels/chunked_logprob.py) never materialises the
  ``tokens x vocab`` logits: it projects tiles of 4,096 tokens x 32,768 vocabulary entries (one ``a``-byte buffer)
  and keeps the completion positions' hidden states and, in the backward, fp32 gradients of those hidden states and
  of the (tied) head weight (``vocab x hidden x 4``). A scoring pass holds one layer's transient ``(2 x hidden + 3 x
  intermediate) x tokens x a`` and the head's tile.
- **generation**: with vLLM colocated, ``vllm_gpu_memory_utilization x M`` (vLLM sizes weights, activations and KV
  cache to that fraction of the whole GPU); with ``vllm_enable_sleep_mode`` it is freed while training, so it counts
  in the generation phase only; in server mode nothing (the server has its own GPUs). With transformers generation
  (``use_vllm: false``) TRL generates the process's whole generation batch (``per_device_train_batch_size x
  steps_per_generation`` rows) in one ``generate``: its KV cache (``rows x tokens x layers x 2 x kv_dim x d``), the
  weights gathered for it under ZeRO-3 (``ds3_gather_for_generation``: ``params x d``), and the larger of the prefill
  transient (``rows x P x (2 x hidden + 3 x intermediate) x a``) and the sampling logits (``3 x rows x vocab x 4``).
- **CUDA context**: 1 GiB (context, cuBLAS workspaces, NCCL buffers).

The total is the larger of the training phase (states, reference, activations, vLLM unless asleep, context) and the
generation phase (states, reference, generation, context); it fits when it is at most 95% of ``M`` (PyTorch's
caching allocator reserves more than it allocates: 5% for that fragmentation). When it does not fit, the plan names
the key to lower, the first of these that fits alone: ``vllm_gpu_memory_utilization`` (colocated vLLM; not below
vLLM's weights, 1 GiB and one group's KV cache), ``per_device_train_batch_size`` (the layout keeps the prompts per
step: more micro-batches), ``prompts_per_generation`` (transformers generation: fewer rows generated at once, in
multiples of ``prompts_per_step``), ``max_completion_length`` (changes the run), and otherwise more processes.

Checked against issue 34's estimates for recipes/qwen_math_aime.yaml (Qwen2.5-Math-1.5B, 1,543,714,304
parameters, tied embedding) on one 80 GB GPU: the issue's ~23 GiB of ZeRO-3 state is 16 bytes per parameter
(22.9 GiB); DeepSpeed's estimator counts 18 per parameter plus 4 x the 233M-parameter embedding, 26.8 GiB, and this
plan takes DeepSpeed's. The issue's ~56 GiB of KV cache for transformers generation is 512 rows x 4,102 tokens (the
acceptance's character-level tokenizer makes the longest AIME prompt ~1,030 tokens) x 28 KiB per token; with
``--prompt-tokens 1030`` this plan gives the same 56.1 GiB, and 49.0 GiB at the default 512 (it also counts the
prefill and the gathered weights, 119 GiB in all for that generation phase). The issue's ~77 of 79 GiB with vLLM at
0.4 compares with this plan's 80.5 GiB of 80 (26.8 states + 2.9 reference + 17.9 activations + 32 vLLM + 1
context): the issue does not give its split; DeepSpeed's larger state (+3.8 GiB) and the context (+1 GiB) are more
than the whole gap, so its other items came to ~1.3 GiB more than here. Either way it does not fit in 95% of the
GPU, and vLLM at 0.3 (72.5 GiB) does. The activations are an estimate of what autograd keeps, not a measurement;
benchmarks/gpu_acceptance.py reports PyTorch's allocated peak against this plan's total once a GPU runs it.

``M`` is the memory nvidia-smi reports (``memory.total``) in GiB; an "80 GB" H100 reports 81,559 MiB (79.6 GiB),
which gives the AIME recipe the same verdicts as 80.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for the annotations only: gbpo.layout's command imports this module
    from .layout import Layout

__all__ = [
    "KNOWN_SHAPES",
    "MemoryPlan",
    "ModelShape",
    "memory_keys",
    "model_shape",
    "plan_memory",
    "zero_model_states_bytes",
]

GiB = 1 << 30
CUDA_CONTEXT_BYTES = 1 * GiB
FRAGMENTATION = 0.05  # share of the GPU kept free for the caching allocator
DEFAULT_PROMPT_TOKENS = 512  # the reference's longest prompt (recipes/qwen_math_aime.yaml)
HEAD_TOKEN_CHUNK, HEAD_VOCAB_CHUNK = 4096, 32768  # TRL 1.16's TOKEN_CHUNK_SIZE and _CHUNKED_LOGPROB_CHUNK_SIZE
SAMPLING_LOGIT_COPIES = 3  # fp32 logits, processed logits, probabilities
VLLM_OVERHEAD_BYTES = 1 * GiB  # vLLM's activations and CUDA graphs, for the lowest useful utilisation
# The recipe keys the plan reads besides gbpo.layout's; the defaults are GBPOConfig's / TRL ModelConfig's.
MEMORY_KEYS = (
    "model_name_or_path",
    "dtype",
    "use_peft",
    "bf16",
    "fp16",
    "beta",
    "gradient_checkpointing",
    "max_completion_length",
    "vllm_max_prompt_tokens",
    "use_vllm",
    "vllm_mode",
    "vllm_gpu_memory_utilization",
    "vllm_enable_sleep_mode",
    "ds3_gather_for_generation",
    "cast_lm_head_to_fp32",
)


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's shape (Qwen2 / Llama family: GQA attention, SwiGLU MLP, RMSNorm).

    ``attention_bias``: q/k/v projections with biases (Qwen2 yes, Llama no). ``head_dim`` None: ``hidden /
    heads``.
    """

    name: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    attention_bias: bool = True
    head_dim: int | None = None

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V) per token and layer: ``kv_heads x head_dim``."""
        return self.num_key_value_heads * (self.head_dim or self.hidden_size // self.num_attention_heads)

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * (self.head_dim or self.hidden_size // self.num_attention_heads)

    def layer_parameters(self) -> int:
        """One decoder layer: q, k, v (with biases when ``attention_bias``), o, gate, up, down, two RMSNorms."""
        h, q, kv, i = self.hidden_size, self.q_dim, self.kv_dim, self.intermediate_size
        bias = (q + 2 * kv) if self.attention_bias else 0
        return h * q + 2 * h * kv + bias + q * h + 3 * h * i + 2 * h

    def parameters(self) -> int:
        """All parameters: embedding, layers, final norm, and an LM head unless tied to the embedding."""
        embedding = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embedding
        return embedding + self.num_hidden_layers * self.layer_parameters() + self.hidden_size + head

    def largest_layer_parameters(self) -> int:
        """Parameters of the module with most of its own: the embedding (or the MLP's largest projection)."""
        return max(self.vocab_size * self.hidden_size, self.hidden_size * self.intermediate_size)


# The recipes' models, from their config.json (hub ids and gbpo.models' short ids).
_QWEN25_MATH_15B = ModelShape("Qwen/Qwen2.5-Math-1.5B", 151936, 1536, 28, 8960, 12, 2, True, True)
_SMOLLM2_135M = ModelShape("HuggingFaceTB/SmolLM2-135M-Instruct", 49152, 576, 30, 1536, 9, 3, True, False)
KNOWN_SHAPES = {
    "Qwen/Qwen2.5-Math-1.5B": _QWEN25_MATH_15B,
    "Qwen/Qwen2.5-Math-1.5B-Instruct": replace(_QWEN25_MATH_15B, name="Qwen/Qwen2.5-Math-1.5B-Instruct"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
    "smollm2-135m": _SMOLLM2_135M,
    "smollm2-135m-instruct": _SMOLLM2_135M,
}


def _shape_from_config(name: str, config: Any) -> ModelShape:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelShape(
        name=name,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        intermediate_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        attention_bias=bool(getattr(config, "attention_bias", config.model_type == "qwen2")),
        head_dim=getattr(config, "head_dim", None),
    )


def model_shape(name_or_path: str) -> ModelShape:
    """The shape of ``name_or_path``, without downloading anything.

    A local directory's ``config.json`` (transformers' ``AutoConfig``) comes first, then :data:`KNOWN_SHAPES`, then
    a config already in the local Hugging Face cache (``local_files_only``).

    Raises:
        ValueError: none of these knows the model (the message lists the known names).
    """
    from transformers import AutoConfig

    if Path(name_or_path).is_dir():
        return _shape_from_config(str(name_or_path), AutoConfig.from_pretrained(name_or_path))
    if name_or_path in KNOWN_SHAPES:
        return KNOWN_SHAPES[name_or_path]
    try:
        return _shape_from_config(name_or_path, AutoConfig.from_pretrained(name_or_path, local_files_only=True))
    except OSError:
        raise ValueError(
            f"No shape for model {name_or_path!r}: not a local directory with a config.json, not in the local "
            f"Hugging Face cache, and not one of {sorted(KNOWN_SHAPES)}. Pass a local model directory."
        ) from None


def zero_model_states_bytes(
    params: int, largest_layer: int, num_processes: int, stage: int, dtype_bytes: int = 2
) -> tuple[int, str]:
    """Bytes per GPU of the trained model's weights, gradients and optimizer states (module docstring).

    Args:
        params, largest_layer: parameter counts of the model and of its largest module.
        num_processes: ``W``, GPUs the states are partitioned over.
        stage: ZeRO stage 0 (no DeepSpeed), 1, 2 or 3.
        dtype_bytes: the model's dtype, for stage 0 only.

    Returns:
        ``(bytes, source)``: ``source`` names DeepSpeed's function, or says its formula was used without it.

    Raises:
        ValueError: a stage other than 0-3.
    """
    if stage == 0:
        return 4 * params * dtype_bytes, f"weights, gradients and AdamW's 2 states in {dtype_bytes}-byte dtype"
    if stage not in (1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {stage!r}.")
    try:
        if stage == 3:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as estimate

            _, gpu, _ = estimate(params, largest_layer, num_processes, 1, cpu_offload=False, cpu_offload_params=False)
        else:
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs as estimate

            _, gpu = estimate(params, num_processes, 1, cpu_offload=False)
        return int(gpu), f"DeepSpeed's {estimate.__name__}, no offload"
    except ImportError:
        if stage == 3:
            gpu = 4 * largest_layer + int(18 * params / num_processes)
        else:
            gpu = 2 * params + int(18 * params / num_processes)
        return gpu, "DeepSpeed's formula (DeepSpeed is not installed)"


def memory_keys(user_keys: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`MEMORY_KEYS` from a recipe's keys as written, unset ones at their GBPOConfig / ModelConfig default
    (``bf16`` unset is on unless ``fp16``, as TRL's GRPOConfig)."""
    from trl import ModelConfig

    from .config import GBPOConfig

    defaults = {f.name: f.default for cls in (GBPOConfig, ModelConfig) for f in fields(cls)}
    keys = {key: user_keys.get(key, defaults.get(key)) for key in MEMORY_KEYS}
    if keys["bf16"] is None:
        keys["bf16"] = not keys["fp16"]
    return keys


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU (module docstring). ``items``: ``(name, bytes, how)`` in print order; ``phases``: the two
    phases' totals; ``advice``: ``(key, value, total bytes with it)`` that fit, the first one the key to lower."""

    layout: Layout
    shape: ModelShape
    gpu_memory_gib: float
    items: list[tuple[str, int, str]]
    phases: dict[str, int]
    advice: list[tuple[str, Any, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return max(self.phases.values())

    @property
    def usable(self) -> int:
        return int(self.gpu_memory_gib * GiB * (1 - FRAGMENTATION))

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    def item(self, name: str) -> int:
        return next(size for item, size, _ in self.items if item == name)

    def lines(self) -> list[str]:
        """The printed plan: one line per item, the total, and the verdict with the key to lower."""
        w = self.layout.num_processes
        out = [
            f"memory plan per GPU ({w} process(es), {self.gpu_memory_gib:g} GiB each; {self.shape.name}, "
            f"{self.shape.parameters():,} parameters):"
        ]
        out += [f"  {name:<22} {size / GiB:7.2f} GiB  {how}" for name, size, how in self.items]
        phase = max(self.phases, key=self.phases.get)
        out.append(
            f"  {'total':<22} {self.total / GiB:7.2f} GiB  the {phase} phase "
            f"(training {self.phases['training'] / GiB:.2f}, generation {self.phases['generation'] / GiB:.2f}); "
            f"usable {self.usable / GiB:.2f} GiB "
            f"({100 - 100 * FRAGMENTATION:g}% of {self.gpu_memory_gib:g})"
        )
        if self.fits:
            out.append(f"fits: {self.total / GiB:.2f} of {self.usable / GiB:.2f} GiB usable.")
        elif self.advice:
            (key, value, total), *others = self.advice
            do = f"Run on {value} GPUs" if key == "--num_processes" else f"Lower {key} to {value}"
            also = "; ".join(f"{k} {v} ({t / GiB:.2f} GiB)" for k, v, t in others)
            out.append(
                f"does not fit: {self.total / GiB:.2f} GiB of {self.usable / GiB:.2f} usable. {do} "
                f"({total / GiB:.2f} GiB)" + (f"; or instead: {also}." if also else ".")
            )
        else:
            out.append(
                f"does not fit: {self.total / GiB:.2f} GiB of {self.usable / GiB:.2f} usable, and no single key "
                "fits it: lower vllm_gpu_memory_utilization, per_device_train_batch_size and max_completion_length "
                "together, or use GPUs with more memory."
            )
        return out


def _dtype_bytes(keys: Mapping[str, Any]) -> tuple[int, int]:
    """(model dtype bytes, activation bytes): ``dtype`` auto follows the mixed precision (bf16 checkpoints)."""
    dtype = str(keys["dtype"] or "auto").replace("torch.", "")
    half = bool(keys["bf16"] or keys["fp16"])
    model = {"bfloat16": 2, "float16": 2, "float32": 4}.get(dtype, 2 if half else 4)
    return model, 2 if half else model


def plan_memory(
    keys: Mapping[str, Any],
    layout: Layout,
    shape: ModelShape,
    gpu_memory_gib: float,
    *,
    zero_stage: int = 3,
    prompt_tokens: int | None = None,
    relayout: Callable[[dict[str, int], int], Layout] | None = None,
) -> MemoryPlan:
    """The memory plan of a recipe's run with ``layout`` on GPUs of ``gpu_memory_gib`` GiB (module docstring).

    Args:
        keys: :func:`memory_keys` of the recipe.
        layout: its batch layout (`gbpo.layout.plan_layout`; ``layout.num_processes`` GPUs, one process each).
        shape: the model's shape (:func:`model_shape`).
        gpu_memory_gib: each GPU's memory, GiB.
        zero_stage: DeepSpeed ZeRO stage of the launch config (launch/zero3_1x4.yaml: 3); 0 for no DeepSpeed.
        prompt_tokens: the longest prompt, tokens; None: ``vllm_max_prompt_tokens`` or 512.
        relayout: ``relayout(changed layout keys, num_processes)`` -> the layout with them (``plan_layout``, raising
            ValueError when it cannot hold); when given and the plan does not fit, the plan names the key to lower
            (it plans again with each candidate value). This module does not import `gbpo.layout`, whose command
            prints this plan.

    Raises:
        ValueError: a ZeRO stage other than 0-3, or ``gpu_memory_gib <= 0``.
    """
    if not gpu_memory_gib > 0:
        raise ValueError(f"--gpu-memory-gib must be > 0, got {gpu_memory_gib!r}.")
    num_processes = layout.num_processes
    w, h, layers, inter = num_processes, shape.hidden_size, shape.num_hidden_layers, shape.intermediate_size
    d, a = _dtype_bytes(keys)
    params = shape.parameters()
    prompt = prompt_tokens or keys["vllm_max_prompt_tokens"] or DEFAULT_PROMPT_TOKENS
    completion = keys["max_completion_length"]
    seq = prompt + completion
    items = []

    states, source = zero_model_states_bytes(params, shape.largest_layer_parameters(), w, zero_stage, d)
    items.append((f"ZeRO-{zero_stage} model states" if zero_stage else "model states", states, source))
    ref = 0
    if keys["beta"] and not keys["use_peft"]:
        ref = params * d // (w if zero_stage == 3 else 1)
        how = f"beta {keys['beta']:g}: {d}-byte weights" + (f", ZeRO-3 sharded over {w}" if zero_stage == 3 else "")
        items.append(("reference model", ref, how))

    rows = layout.trained_rows_per_process
    tokens = math.ceil(rows * seq)
    per_token_layer = 12 * h + 3 * shape.kv_dim + 4 * inter  # elements a layer keeps for its backward
    head_bytes = 4 if keys["cast_lm_head_to_fp32"] else a
    head_tile = min(tokens, HEAD_TOKEN_CHUNK) * min(shape.vocab_size, HEAD_VOCAB_CHUNK) * head_bytes
    completion_tokens = math.ceil(rows * completion)
    head = head_tile + completion_tokens * h * (a + 4) + shape.vocab_size * h * 4
    if keys["gradient_checkpointing"]:
        kept = layers * tokens * h * a + 2 * per_token_layer * tokens * a
        how_kept = "gradient checkpointing: every layer's input + one recomputed layer and its gradients"
    else:
        kept = (layers + 1) * per_token_layer * tokens * a
        how_kept = "no gradient checkpointing: every layer's activations"
    training = kept + head
    score_tokens = layout.per_device_train_batch_size * seq
    scoring = score_tokens * a * (2 * h + 3 * inter) + min(score_tokens, HEAD_TOKEN_CHUNK) * HEAD_VOCAB_CHUNK * a
    activations = max(training, scoring)
    which = (
        f"training micro-batch of {rows:g} trained rows x {seq} tokens ({prompt} prompt + {completion} completion), "
        f"{how_kept}, TRL's chunked log-prob head {head / GiB:.2f}"
        if training >= scoring
        else f"scoring pass of {layout.per_device_train_batch_size} rows x {seq} tokens, no gradient"
    )
    items.append(("activations", activations, which))

    vllm_training, generation = 0, 0
    if keys["use_vllm"] and keys["vllm_mode"] == "colocate":
        generation = int(keys["vllm_gpu_memory_utilization"] * gpu_memory_gib * GiB)
        asleep = bool(keys["vllm_enable_sleep_mode"])
        vllm_training = 0 if asleep else generation
        how = f"vllm_gpu_memory_utilization {keys['vllm_gpu_memory_utilization']:g} x {gpu_memory_gib:g} GiB"
        items.append(("vLLM (colocated)", generation, how + (", asleep while training" if asleep else "")))
    elif keys["use_vllm"]:
        items.append(("vLLM (server)", 0, "on the server's own GPUs"))
    else:
        gen_rows = layout.per_device_train_batch_size * layout.steps_per_generation
        kv = gen_rows * seq * _kv_bytes(shape, d)
        gathered = params * d if zero_stage == 3 and keys["ds3_gather_for_generation"] else 0
        transient = max(
            gen_rows * prompt * a * (2 * h + 3 * inter), SAMPLING_LOGIT_COPIES * gen_rows * shape.vocab_size * 4
        )
        generation = kv + gathered + transient
        how = (
            f"transformers generation of {gen_rows} rows x {seq} tokens: KV cache {kv / GiB:.2f}"
            + (f", weights gathered for it {gathered / GiB:.2f}" if gathered else "")
            + f", prefill/sampling {transient / GiB:.2f}"
        )
        items.append(("generation", generation, how))
    items.append(("CUDA context", CUDA_CONTEXT_BYTES, "context, cuBLAS workspaces, NCCL buffers"))

    base = states + ref + CUDA_CONTEXT_BYTES
    phases = {"training": base + activations + vllm_training, "generation": base + generation}
    plan = MemoryPlan(layout, shape, gpu_memory_gib, items, phases)
    if plan.fits or relayout is None:
        return plan
    again = dict(shape=shape, gpu_memory_gib=gpu_memory_gib, zero_stage=zero_stage, prompt_tokens=prompt_tokens)
    return replace(plan, advice=_advice(plan, keys, relayout, again))


def _advice(plan: MemoryPlan, keys, relayout, again: dict) -> list[tuple[str, Any, int]]:
    """``(key, value, total)`` for each key whose lowering alone makes the plan fit, in the module docstring's order."""
    found = []
    w = plan.layout.num_processes

    def first_fit(key: str, values, *, in_layout: bool = False) -> None:
        for value in values:
            try:
                layout = relayout({key: value}, w) if in_layout else plan.layout
            except ValueError:
                continue
            other = plan_memory(keys if in_layout else {**keys, key: value}, layout, **again)
            if other.fits:
                found.append((key, round(getattr(layout, key)) if in_layout else value, other.total))
                return

    if keys["use_vllm"] and keys["vllm_mode"] == "colocate":
        d, _ = _dtype_bytes(keys)
        shape, util = plan.shape, keys["vllm_gpu_memory_utilization"]
        prompt = again["prompt_tokens"] or keys["vllm_max_prompt_tokens"] or DEFAULT_PROMPT_TOKENS
        group_kv = plan.layout.num_generations * (prompt + keys["max_completion_length"]) * _kv_bytes(shape, d)
        floor = (shape.parameters() * d + VLLM_OVERHEAD_BYTES + group_kv) / (plan.gpu_memory_gib * GiB)
        steps = [round(util - 0.05 * i, 2) for i in range(1, int(util / 0.05) + 1)]
        first_fit("vllm_gpu_memory_utilization", [u for u in steps if u >= floor])
    b = plan.layout.per_device_train_batch_size
    first_fit("per_device_train_batch_size", range(b - 1, 0, -1), in_layout=True)
    if not keys["use_vllm"]:  # transformers generates the whole generation batch at once
        step, now = round(plan.layout.prompts_per_step), round(plan.layout.prompts_per_generation)
        first_fit("prompts_per_generation", range(now - step, 0, -step), in_layout=True)
    length = keys["max_completion_length"]
    first_fit("max_completion_length", range(length - 256, 0, -256))
    if not found:  # more GPUs: ZeRO-3 shards the states and the reference model over them
        for n in (2 * w, 4 * w, 8 * w):
            try:
                other = plan_memory(keys, relayout({}, n), **again)
            except ValueError:
                continue
            if other.fits:
                found.append(("--num_processes", n, other.total))
                break
    return found


def _kv_bytes(shape: ModelShape, dtype_bytes: int) -> int:
    """KV cache bytes per token over all layers: ``layers x 2 (K and V) x kv_dim x dtype bytes``."""
    return shape.num_hidden_layers * 2 * shape.kv_dim * dtype_bytes
