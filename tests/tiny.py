"""A tiny random Qwen2 model and a character-level tokenizer with a chat template, built in code (no hub)."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

SPECIAL = ["<|pad|>", "<|im_start|>", "<|im_end|>"]

# GBPOConfig keys every tiny training run shares: log every step, save nothing, no tracker, fp32 on the CPU, seed 0.
CPU_RUN = {"logging_steps": 1, "save_strategy": "no", "report_to": "none", "bf16": False, "use_cpu": True, "seed": 0}
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    chars = list(dict.fromkeys(string.printable))
    vocab = {tok: i for i, tok in enumerate(SPECIAL + chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, ignore_merges=True))
    backend.add_special_tokens(SPECIAL)
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|im_end|>", bos_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# vLLM's CPU attention kernels take head sizes from 32 up (not the 8 of the default tiny model), and the paper's
# AIME prompts need more positions than 512 with a character-level tokenizer.
VLLM_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 4096,
}


def make_model(tokenizer, seed: int = 0, **shape):
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        **{
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            **shape,
        },
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny(path: str | Path, seed: int = 0, **shape) -> Path:
    """Save the tiny model and tokenizer to ``path`` (a directory that `from_pretrained` and vLLM load).

    ``shape`` overrides Qwen2Config keys, e.g. ``**VLLM_SHAPE`` for a model vLLM's CPU kernels accept.
    """
    path = Path(path)
    tokenizer = make_tokenizer()
    make_model(tokenizer, seed, **shape).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
