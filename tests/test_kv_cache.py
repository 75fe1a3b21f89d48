"""vLLM's KV cache on a CPU is sized from the job (gbpo/kv_cache.py), with hand-worked sizes; no engine is started.

SmolLM2-135M (the CPU default, converted config in ~/.cache/gbpo): 30 layers, 3 KV heads, head_dim 64, so one token
takes 30 x 2 (K and V) x 3 x 64 = 11,520 elements: 46,080 bytes in fp32, 23,040 in bf16. One 128-token block over
all layers: 128 x 46,080 = 5,898,240 bytes.
"""

import importlib.util
from types import SimpleNamespace

import pytest
from datasets import Dataset
from tiny import VLLM_SHAPE, make_tokenizer, save_tiny
from transformers import AutoConfig, LlamaConfig, Qwen2Config

from gbpo.config import GBPOConfig
from gbpo.kv_cache import (
    cpu_kv_cache_options,
    dtype_bytes,
    kv_bytes_per_token,
    kv_cache_bytes,
    longest_prompt_tokens,
)
from gbpo.models import resolve_model

SMOLLM2 = dict(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64, hidden_size=576)
BLOCK_FP32 = 128 * 46_080  # one block of SmolLM2 in fp32, all layers: 5,898,240 bytes
GiB = 1 << 30

# Two conversational prompts; with tests/tiny.py's character tokenizer and chat template
# "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n" they are 1 + 4 + 1 + len(content) + 1 + 1 + 1 + 9 + 1
# tokens: 25 for "7 - 1?" (6 characters), 27 for "12 + 30?" (8).
PROMPTS = [[{"role": "user", "content": "7 - 1?"}], [{"role": "user", "content": "12 + 30?"}]]


def smollm2_config():
    return LlamaConfig(**SMOLLM2)


def test_the_converted_smollm2_config_has_the_shape_the_hand_work_uses():
    config = AutoConfig.from_pretrained(resolve_model("smollm2-135m"))
    assert {key: getattr(config, key) for key in SMOLLM2} == SMOLLM2


def test_bytes_per_token():
    assert kv_bytes_per_token(smollm2_config(), "float32") == 46_080
    assert kv_bytes_per_token(smollm2_config(), "bfloat16") == 23_040
    assert kv_bytes_per_token(smollm2_config(), "auto") == 46_080  # sized for the widest dtype vLLM may pick
    # the vLLM-shaped tiny model: no head_dim key -> hidden 64 / 2 heads = 32; 2 layers x 2 x 1 KV head x 32 x 4 B
    assert kv_bytes_per_token(Qwen2Config(**VLLM_SHAPE, num_hidden_layers=2), "float32") == 512
    # no num_key_value_heads: multi-head attention, 4 KV heads of 32 / 4 = 8: 2 x 2 x 4 x 8 x 2 B
    plain = SimpleNamespace(num_hidden_layers=2, num_attention_heads=4, hidden_size=32)
    assert kv_bytes_per_token(plain, "float16") == 256


def test_the_cpu_default_job_needs_a_tenth_of_the_old_fixed_4_gib():
    # recipes/smollm2_cpu.yaml: 4 x 16 = 64 sequences at once; the longest arithmetic prompt is 50 tokens + 48 new
    # = 98 tokens, one block each: 64 blocks x 1.25 = 80, + vLLM's null block = 81 blocks
    size = kv_cache_bytes(smollm2_config(), dtype="float32", max_num_seqs=64, max_seq_len=98)
    assert size == 81 * BLOCK_FP32 == 477_757_440  # 0.445 GiB
    assert size < 4 * GiB / 8
    assert kv_cache_bytes(smollm2_config(), dtype="bfloat16", max_num_seqs=64, max_seq_len=98) == 238_878_720
    # 129 tokens take 2 blocks per sequence: 64 x 2 x 1.25 = 160, + 1
    assert kv_cache_bytes(smollm2_config(), dtype="float32", max_num_seqs=64, max_seq_len=129) == 161 * BLOCK_FP32
    # no margin: exactly the blocks the sequences fill, + 1
    assert kv_cache_bytes(smollm2_config(), dtype="float32", max_num_seqs=3, max_seq_len=300, margin=1) == (
        (3 * 3 + 1) * BLOCK_FP32
    )


def test_a_set_max_model_len_is_a_floor():
    tiny = Qwen2Config(**VLLM_SHAPE, num_hidden_layers=2)  # 512 bytes per token, 65,536 per block
    # 4 sequences of 20 tokens: ceil(4 x 1 x 1.25) = 5 blocks + 1
    assert kv_cache_bytes(tiny, dtype="float32", max_num_seqs=4, max_seq_len=20) == 6 * 65_536
    # an engine built with max_model_len 4096 must hold one such sequence: 32 blocks + 1
    assert kv_cache_bytes(tiny, dtype="float32", max_num_seqs=4, max_seq_len=20, max_model_len=4096) == 33 * 65_536
    # a floor below the job's blocks changes nothing: SmolLM2's 8192 positions are 64 blocks < 80
    assert kv_cache_bytes(smollm2_config(), dtype="float32", max_num_seqs=64, max_seq_len=98, max_model_len=8192) == (
        81 * BLOCK_FP32
    )


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"max_seq_len": 0}, "max_seq_len"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"margin": 0.5}, "margin"),
        ({"dtype": "int8"}, "int8"),
    ],
)
def test_bad_arguments_are_named(keys, named):
    arguments = {"dtype": "float32", "max_num_seqs": 4, "max_seq_len": 20, **keys}
    with pytest.raises(ValueError, match=named):
        kv_cache_bytes(smollm2_config(), **arguments)


def test_a_config_without_layers_asks_for_the_environment_variable():
    with pytest.raises(ValueError, match="VLLM_CPU_KVCACHE_SPACE"):
        kv_bytes_per_token(SimpleNamespace(hidden_size=64), "float32")
    with pytest.raises(ValueError, match="dtype"):
        dtype_bytes("fp8")


def test_engine_options_fit_max_model_len_to_the_cache_unless_the_user_sizes_it():
    options, line = cpu_kv_cache_options(smollm2_config(), dtype="float32", max_num_seqs=64, max_seq_len=98, environ={})
    assert options == {"kv_cache_memory_bytes": 477_757_440, "max_model_len": -1}
    assert "0.44 GiB for 64 sequences at once of up to 98 tokens" in line
    assert "46080 bytes per token in float32" in line
    # an engine with its own max_model_len keeps it
    options, _ = cpu_kv_cache_options(
        smollm2_config(), dtype="float32", max_num_seqs=64, max_seq_len=98, max_model_len=8192, environ={}
    )
    assert options == {"kv_cache_memory_bytes": 477_757_440}
    # VLLM_CPU_KVCACHE_SPACE set by the user: nothing passed, vLLM takes the user's GiB
    options, line = cpu_kv_cache_options(
        smollm2_config(), dtype="float32", max_num_seqs=64, max_seq_len=98, environ={"VLLM_CPU_KVCACHE_SPACE": "2"}
    )
    assert options == {}
    assert line == "vLLM KV cache: 2 GiB (VLLM_CPU_KVCACHE_SPACE is set)."


def test_longest_prompt_is_counted_as_trl_tokenizes_it():
    tokenizer = make_tokenizer()
    assert longest_prompt_tokens(PROMPTS, tokenizer) == 27
    assert longest_prompt_tokens(PROMPTS[:1], tokenizer) == 25
    assert longest_prompt_tokens(["abc", "abcdefg"], tokenizer) == 7  # plain text: one token a character, no BOS
    with pytest.raises(ValueError, match="empty"):
        longest_prompt_tokens([], tokenizer)


def training_args(**keys):
    base = dict(output_dir="unused", report_to="none", bf16=False, use_cpu=True, num_generations=8)
    base |= dict(per_device_train_batch_size=16, steps_per_generation=4, max_completion_length=48)
    return GBPOConfig(**{**base, "vllm_dtype": "float32", **keys})


def test_the_training_engine_fits_training_and_evaluation_sequences(monkeypatch):
    from gbpo.vllm_cpu import colocated_kv_cache_options

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    model = SimpleNamespace(config=smollm2_config(), name_or_path="unused")
    dataset = Dataset.from_dict({"prompt": PROMPTS})
    tokenizer = make_tokenizer()
    # 16 x 4 = 64 sequences at once, 27 + 48 = 75 tokens: one block each -> 81 blocks
    options, line = colocated_kv_cache_options(model, training_args(), dataset, tokenizer)
    assert options == {"kv_cache_memory_bytes": 81 * BLOCK_FP32, "max_model_len": -1}
    assert "64 sequences at once of up to 75 tokens" in line
    # the in-training evaluation's 200 new tokens: 227 tokens, 2 blocks each -> 64 x 2 x 1.25 + 1 = 161
    options, _ = colocated_kv_cache_options(model, training_args(eval_max_new_tokens=200), dataset, tokenizer)
    assert options["kv_cache_memory_bytes"] == 161 * BLOCK_FP32
    # a longest prompt given (gbpo.train's, over the evaluation prompts too): 300 + 48 = 348, 3 blocks -> 241
    options, _ = colocated_kv_cache_options(model, training_args(vllm_max_prompt_tokens=300), dataset, tokenizer)
    assert options["kv_cache_memory_bytes"] == 241 * BLOCK_FP32
    # TRL's sequences at once count tensor parallelism and steps per generation: 8 x 2 = 16 -> 20 + 1 blocks
    args = training_args(per_device_train_batch_size=8, steps_per_generation=2)
    options, _ = colocated_kv_cache_options(model, args, dataset, tokenizer)
    assert options["kv_cache_memory_bytes"] == 21 * BLOCK_FP32
    # the user's vllm_max_model_length stays the engine's, and is a floor: 8192 tokens = 64 blocks < 80
    options, _ = colocated_kv_cache_options(model, training_args(vllm_max_model_length=8192), dataset, tokenizer)
    assert options == {"kv_cache_memory_bytes": 81 * BLOCK_FP32}


def test_the_training_engine_without_measurable_prompts_names_the_key(monkeypatch):
    from gbpo.vllm_cpu import colocated_kv_cache_options

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    model = SimpleNamespace(config=smollm2_config(), name_or_path="unused")
    with pytest.raises(ValueError, match="vllm_max_prompt_tokens"):
        colocated_kv_cache_options(model, training_args(), Dataset.from_dict({"text": ["a"]}), make_tokenizer())
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")  # the user's size: nothing to measure, nothing passed
    assert colocated_kv_cache_options(model, training_args(), None, None) == (
        {},
        "vLLM KV cache: 3 GiB (VLLM_CPU_KVCACHE_SPACE is set).",
    )


def test_vllm_max_prompt_tokens_must_be_positive():
    with pytest.raises(ValueError, match="vllm_max_prompt_tokens"):
        training_args(vllm_max_prompt_tokens=0)


def test_gbpo_train_counts_the_evaluation_prompts():
    from gbpo.kv_cache import fit_engine_to_prompts

    tokenizer = make_tokenizer()
    train = Dataset.from_dict({"prompt": PROMPTS[:1]})  # 25 tokens
    evaluation = Dataset.from_dict({"prompt": PROMPTS[1:]})  # 27 tokens
    args = training_args()
    fit_engine_to_prompts(args, tokenizer, [train, evaluation])
    assert args.vllm_max_prompt_tokens == 27
    args = training_args(vllm_max_prompt_tokens=500)  # the user's value stays
    fit_engine_to_prompts(args, tokenizer, [train, evaluation])
    assert args.vllm_max_prompt_tokens == 500


class Recorder:
    """Stands in for `vllm.LLM`: records its keyword arguments, starts nothing."""

    def __init__(self, **kwargs):
        type(self).calls.append(kwargs)


def test_trls_engine_gets_the_kv_cache_and_keeps_a_max_model_len_it_was_given(monkeypatch):
    from trl.generation import vllm_generation

    from gbpo.vllm_cpu import vllm_engine_options

    Recorder.calls = []
    monkeypatch.setattr(vllm_generation, "LLM", Recorder, raising=False)
    kv_cache = {"kv_cache_memory_bytes": 6 * 65_536, "max_model_len": -1}
    with vllm_engine_options("float32", True, kv_cache):
        vllm_generation.LLM(model="m", max_model_len=None, max_num_seqs=64)  # TRL without vllm_max_model_length
        vllm_generation.LLM(model="m", max_model_len=512, max_num_seqs=64)  # with it
    assert vllm_generation.LLM is Recorder  # restored
    first, second = Recorder.calls
    assert first == dict(
        model="m", max_model_len=-1, max_num_seqs=64, kv_cache_memory_bytes=393_216, dtype="float32", enforce_eager=True
    )
    assert second["max_model_len"] == 512 and second["kv_cache_memory_bytes"] == 393_216


def _vllm_cpu_build() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


@pytest.mark.skipif(
    not _vllm_cpu_build(), reason="sizes a vLLM engine on a CPU build; vLLM here is absent or a GPU build"
)
def test_evaluate_builds_its_cpu_engine_sized_from_the_job(tmp_path, monkeypatch):
    import vllm

    from gbpo.evaluation.loading import _load_vllm

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    Recorder.calls = []
    monkeypatch.setattr(vllm, "LLM", Recorder)
    model_dir = save_tiny(tmp_path / "model", **VLLM_SHAPE)
    _load_vllm(str(model_dir), seed=3, dtype="float32", prompts=PROMPTS, max_new_tokens=8, max_num_seqs=4)
    # 4 sequences of 27 + 8 = 35 tokens: 1 block each, 5 + 1 blocks of 128 x 512 bytes (tiny model, fp32)
    (call,) = Recorder.calls
    assert call == dict(
        model=str(model_dir), seed=3, dtype="float32", kv_cache_memory_bytes=393_216, max_model_len=-1, max_num_seqs=4
    )
    with pytest.raises(ValueError, match="max_num_seqs"):
        _load_vllm(str(model_dir), seed=3, dtype="float32")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="--backend vllm needs vLLM installed")
def test_evaluate_cli_runs_its_engine_at_most_batch_size_sequences_at_once(tmp_path, monkeypatch):
    from gbpo.evaluation import cli

    calls = []

    class Stop(Exception):
        pass

    def fake_load_vllm(path, **kwargs):
        calls.append(kwargs)
        raise Stop  # before any engine or generation

    monkeypatch.setattr(cli, "_load_vllm", fake_load_vllm)
    model_dir = save_tiny(tmp_path / "model", **VLLM_SHAPE)
    common = ["--model", str(model_dir), "--benchmarks", "arithmetic", "--backend", "vllm", "--max-new-tokens", "8"]
    for extra in (["--limit", "3", "--num-samples", "2"], ["--limit", "3", "--num-samples", "4", "--batch-size", "5"]):
        with pytest.raises(Stop):
            cli.main([*common, *extra, "--output-dir", str(tmp_path / "out")])
    # 3 problems x 2 samples = 6 sequences, under the default --batch-size 64; 3 x 4 = 12, capped at --batch-size 5
    assert [(c["max_num_seqs"], len(c["prompts"]), c["max_new_tokens"]) for c in calls] == [(6, 3, 8), (5, 3, 8)]
