"""gbpo.memory_plan (``python -m gbpo.layout RECIPE --num_processes N --gpu-memory-gib M``): parameter counts and ZeRO
states worked by hand and checked against transformers and DeepSpeed, issue 34's two cases for the AIME recipe, the key
named when a plan does not fit, and no import circle left between gbpo.layout and gbpo.train."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from gbpo.layout import layout_keys, main, plan_layout
from gbpo.memory_plan import (
    KNOWN_SHAPES,
    GiB,
    ModelShape,
    memory_keys,
    model_shape,
    plan_memory,
    zero_model_states_bytes,
)

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "qwen_math_aime.yaml"
PACKAGE = ROOT / "gbpo"

# Qwen2.5-Math-1.5B by hand from its config.json (hidden 1536, 28 layers, intermediate 8960, vocab 151936, 12 heads of
# 128 and 2 KV heads, so K and V are 256 wide; q/k/v biases; tied embedding):
EMBEDDING = 151936 * 1536  # 233,373,696, also the largest layer
LAYER = (1536 * 1536 + 1536) + 2 * (1536 * 256 + 256) + 1536 * 1536 + 3 * 1536 * 8960 + 2 * 1536  # 46,797,824
QWEN_PARAMS = EMBEDDING + 28 * LAYER + 1536  # + the final norm: 1,543,714,304
TINY = {"vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128}
TINY_HEADS = {"num_attention_heads": 4, "num_key_value_heads": 2}


def gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def test_parameter_counts_match_transformers_and_the_hand_count():
    assert KNOWN_SHAPES["Qwen/Qwen2.5-Math-1.5B"].parameters() == QWEN_PARAMS == 1_543_714_304
    assert KNOWN_SHAPES["Qwen/Qwen2.5-Math-1.5B"].largest_layer_parameters() == EMBEDDING
    qwen = Qwen2ForCausalLM(Qwen2Config(**TINY, **TINY_HEADS, tie_word_embeddings=True))  # q/k/v biases, tied
    llama = LlamaForCausalLM(LlamaConfig(**TINY, **TINY_HEADS, tie_word_embeddings=False))  # no biases, own head
    assert ModelShape("q", **TINY, **TINY_HEADS, tie_word_embeddings=True).parameters() == qwen.num_parameters()
    shape = ModelShape("l", **TINY, **TINY_HEADS, tie_word_embeddings=False, attention_bias=False)
    assert shape.parameters() == llama.num_parameters()
    # by hand: embedding 8192; a layer 64x64 + 2 x 64x32 + o 64x64 + 3 x 64x128 + 2 norms x 64 = 36,992; untied head
    assert llama.num_parameters() == 8192 + 2 * 36_992 + 64 + 8192


def test_a_local_model_directory_gives_its_shape_and_an_unknown_name_is_an_error(tmp_path):
    Qwen2Config(**TINY, **TINY_HEADS, tie_word_embeddings=True).save_pretrained(tmp_path)
    shape = model_shape(str(tmp_path))
    assert (shape.hidden_size, shape.num_hidden_layers, shape.kv_dim, shape.attention_bias) == (64, 2, 32, True)
    with pytest.raises(ValueError, match="No shape for model 'no-such/model'.*Qwen/Qwen2.5-Math-1.5B"):
        model_shape("no-such/model")


def test_zero_states_match_deepspeed_and_its_formula_by_hand(monkeypatch):
    params, largest = 82_496, 8_192  # the tiny Qwen2 above: its embedding is its largest layer
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    _, deepspeed_gpu, _ = estimate_zero3_model_states_mem_needs(params, largest, 2, 1, False, False)
    by_hand = 4 * largest + 18 * params // 2  # 32,768 + 742,464
    assert deepspeed_gpu == by_hand == 775_232
    source = "DeepSpeed's estimate_zero3_model_states_mem_needs, no offload"
    assert zero_model_states_bytes(params, largest, 2, 3) == (775_232, source)
    assert zero_model_states_bytes(params, largest, 2, 2)[0] == 2 * params + 18 * params // 2 == 907_456
    assert zero_model_states_bytes(params, largest, 2, 0, dtype_bytes=2)[0] == 4 * 2 * params  # no DeepSpeed
    # without DeepSpeed the same formula, said so
    monkeypatch.setitem(sys.modules, "deepspeed.runtime.zero.stage3", None)
    assert zero_model_states_bytes(params, largest, 2, 3) == (
        775_232,
        "DeepSpeed's formula (DeepSpeed is not installed)",
    )


def test_aime_on_four_80gb_gpus_fits(capsys):
    assert main([str(RECIPE), "--num_processes", "4", "--gpu-memory-gib", "80"]) == 0
    out = capsys.readouterr().out
    assert f"ZeRO-3 model states       {gib(4 * EMBEDDING + 18 * QWEN_PARAMS // 4)}" in out  # 7.34 GiB
    assert f"reference model           {gib(2 * QWEN_PARAMS // 4)}" in out  # bf16, sharded over 4
    assert "vLLM (colocated)         32.00 GiB  vllm_gpu_memory_utilization 0.4 x 80 GiB" in out
    assert out.splitlines()[-1].startswith("fits: ") and "of 76.00 GiB usable" in out  # 95% of 80


def test_aime_on_one_80gb_gpu_with_vllm_at_04_does_not_fit_and_names_the_key(capsys):
    argv = [str(RECIPE), "--num_processes", "1", "--gpu-memory-gib", "80", "--max_completion_length", "3072"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert f"ZeRO-3 model states      {gib(4 * EMBEDDING + 18 * QWEN_PARAMS)}" in out  # 26.75 GiB
    # the training micro-batch: 16 trained rows of 512 + 3072 tokens (the layout on 1 process: 32 generated, 16
    # trained); gradient checkpointing keeps 28 layer inputs and one layer of e = 12 x 1536 + 3 x 256 + 4 x 8960
    # elements per token with its gradients; TRL's head: one 4096 x 32768 bf16 tile, the 16 x 3072 completion
    # positions' hidden states (bf16) and their fp32 gradients, and the fp32 gradient of the tied 151936 x 1536 head
    tokens = 16 * 3584
    checkpoints, layer = 28 * tokens * 1536 * 2, 2 * (12 * 1536 + 3 * 256 + 4 * 8960) * tokens * 2
    head = 4096 * 32768 * 2 + 16 * 3072 * 1536 * (2 + 4) + 151936 * 1536 * 4
    assert f"activations              {gib(checkpoints + layer + head)}" in out  # 17.89 GiB
    assert checkpoints + layer + head < tokens * 151936 * 4  # less than the fp32 logits TRL never materialises
    last = out.splitlines()[-1]
    assert last.startswith("does not fit: 80.52 GiB of 76.00 usable. Lower vllm_gpu_memory_utilization to 0.3 ")
    # and the key it names does make it fit
    assert main([*argv, "--vllm_gpu_memory_utilization", "0.3"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "fits: 72.52 of 76.00 GiB usable."


def test_transformers_generation_of_the_whole_batch_is_the_issues_56_gib_kv_cache():
    user = {**yaml.safe_load(RECIPE.read_text()), "use_vllm": False}
    layout = plan_layout(layout_keys(user), 1)
    relayout = lambda changes, w: plan_layout({**layout_keys(user), **changes}, w)  # noqa: E731
    shape = KNOWN_SHAPES["Qwen/Qwen2.5-Math-1.5B"]
    plan = plan_memory(memory_keys(user), layout, shape, 80, prompt_tokens=1030, relayout=relayout)
    # 512 rows (32 per micro-batch x 16 micro-batches per generation) x (1030 + 3072) tokens x 28 layers x K and V x
    # 256 x 2 bytes
    kv = 512 * 4102 * 28 * 2 * 256 * 2
    assert round(kv / GiB, 2) == 56.08
    generation = next(how for name, _, how in plan.items if name == "generation")
    assert f"transformers generation of 512 rows x 4102 tokens: KV cache {kv / GiB:.2f}" in generation
    assert not plan.fits and plan.advice[0][:2] == ("prompts_per_generation", 2)  # 128 rows at once fit


def test_a_bad_memory_argument_is_an_error(capsys):
    assert main([str(RECIPE), "--num_processes", "1", "--gpu-memory-gib", "0"]) == 2
    assert "gbpo.layout: error: --gpu-memory-gib must be > 0, got 0.0." in capsys.readouterr().err


def _runtime_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The gbpo modules ``path`` imports anywhere (functions included), except under ``if TYPE_CHECKING:``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes = node.orelse
        else:
            nodes = list(ast.iter_child_nodes(node))
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                found.update([module, *(f"{module}.{alias.name}" for alias in node.names)])
        for child in nodes:
            visit(child)

    visit(ast.parse(path.read_text()))
    return (found & modules) - {name}


def test_no_import_circle_in_the_package():
    paths = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")
    }
    graph = {name: _runtime_imports(path, name, set(paths)) for name, path in paths.items()}
    assert "gbpo.recipe" in graph["gbpo.layout"] and "gbpo.recipe" in graph["gbpo.train"]  # the shared parsing
    assert "gbpo.train" not in graph["gbpo.layout"] and "gbpo.layout" in graph["gbpo.train"]

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen)) for n in graph[start])

    assert [name for name in graph if reaches(name, name, set())] == []


def test_the_layout_command_never_imports_gbpo_train():
    code = (
        "import sys, gbpo.layout\n"
        f"status = gbpo.layout.main([{str(RECIPE)!r}, '--num_processes', '4', '--gpu-memory-gib', '80'])\n"
        "print('status', status, 'gbpo.train' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "status 0 False"
