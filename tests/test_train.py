"""`python -m gbpo.train RECIPE.yaml`: recipes parse, unknown keys fail, a tiny run trains and saves."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gbpo.train import _argv_with_config, build_reward_funcs, make_parser

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
CPU = ["--bf16", "false", "--use_cpu", "true"]  # the GPU recipes ask for bf16, which this machine rejects


def assert_trained_model_saved(out: Path, initial_dir: Path) -> None:
    """``out`` holds full weights (not ZeRO-3 shards) that differ from those in ``initial_dir``, and loads."""
    trained = load_file(out / "model.safetensors")
    initial = load_file(Path(initial_dir) / "model.safetensors")
    assert set(initial) <= set(trained)
    assert all(trained[k].shape == initial[k].shape for k in initial)
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    AutoModelForCausalLM.from_pretrained(out)


def tiny_recipe(tmp_path, model_dir, **overrides):
    recipe = {
        "model_name_or_path": str(model_dir),
        "dtype": "float32",
        "dataset_name": "arithmetic",
        "dataset_limit": 4,
        "instruction": "Put the final answer in \\boxed{}.",
        "reward_funcs": ["majority_vote", "accuracy"],
        "answer_fallback_last_number": True,
        "num_generations": 4,
        "per_device_train_batch_size": 4,
        "max_completion_length": 8,
        "max_steps": 2,
        "learning_rate": 0.01,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "use_cpu": True,
        "output_dir": str(tmp_path / "out"),
    }
    recipe.update(overrides)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_shipped_recipes_parse(recipe):
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        args=_argv_with_config([str(RECIPES / recipe), *CPU])
    )
    assert training_args.loss_type == "gbpo"
    assert model_args.model_name_or_path
    assert build_reward_funcs(script_args, training_args)


def test_paper_recipe_maps_the_reference_setting():
    _, args, model_args = make_parser().parse_args_and_config(
        args=_argv_with_config([str(RECIPES / "qwen_math_aime.yaml"), *CPU])
    )
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-Math-1.5B"
    assert (args.num_generations, args.num_iterations, args.learning_rate) == (32, 10, 5e-7)
    assert (args.epsilon, args.gbpo_temperature, args.beta, args.entropy_coef) == (0.3, 1e-4, 0.001, 0.005)
    assert args.use_vllm and args.vllm_mode == "colocate" and args.max_completion_length == 3072


def test_unknown_recipe_key_is_an_error_naming_it(tmp_path, tiny_model_dir):
    path = tiny_recipe(tmp_path, tiny_model_dir, learning_rat=0.1)
    with pytest.raises(ValueError, match="learning_rat"):
        make_parser().parse_args_and_config(args=_argv_with_config([str(path)]))


def test_unknown_reward_is_an_error(tmp_path, tiny_model_dir):
    path = tiny_recipe(tmp_path, tiny_model_dir, reward_funcs=["majority"])
    script_args, training_args, _ = make_parser().parse_args_and_config(args=_argv_with_config([str(path)]))
    with pytest.raises(ValueError, match="'majority'.*majority_vote"):
        build_reward_funcs(script_args, training_args)


def test_command_line_overrides_the_recipe(tmp_path, tiny_model_dir):
    path = tiny_recipe(tmp_path, tiny_model_dir)
    _, args, _ = make_parser().parse_args_and_config(args=_argv_with_config([str(path), "--num_iterations", "3"]))
    assert args.num_iterations == 3


def test_train_command_trains_saves_and_writes_metrics(tmp_path, tiny_model_dir):
    path = tiny_recipe(tmp_path, tiny_model_dir)
    result = subprocess.run(
        [sys.executable, "-m", "gbpo.train", str(path), "--max_steps", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "out"
    assert_trained_model_saved(out, tiny_model_dir)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "gbpo/ratio/mean" in m]
    assert len(steps) == 3
    for key in ("ttrl/majority_ratio", "ttrl/label_accuracy", "ttrl/reward_accuracy", "rewards/accuracy/mean"):
        assert all(0.0 <= m[key] <= 1.0 for m in steps), key


def test_lora_recipe_trains_and_saves_an_adapter_that_loads(tmp_path, tiny_model_dir):
    from peft import AutoPeftModelForCausalLM

    path = tiny_recipe(
        tmp_path,
        tiny_model_dir,
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        lora_target_modules=["q_proj", "v_proj"],
        learning_rate=0.05,
    )
    result = subprocess.run(
        [sys.executable, "-m", "gbpo.train", str(path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "out"
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # lora_B starts at zero: training moved it
    model = AutoPeftModelForCausalLM.from_pretrained(out)  # the adapter loads with its base, for evaluation
    assert model.peft_config["default"].r == 4


def test_benchmark_evaluation_during_training(tmp_path, tiny_model_dir):
    from gbpo.train import main

    path = tiny_recipe(
        tmp_path,
        tiny_model_dir,
        eval_benchmarks=["arithmetic"],
        eval_limit=3,
        eval_steps=1,  # the callback's schedule; eval_strategy stays "no"
        eval_num_samples=2,
        eval_max_new_tokens=6,
        eval_fallback_last_number=True,
    )
    trainer = main([str(path)])
    history = trainer.state.log_history
    evals = [e for e in history if "eval/arithmetic/pass@1" in e]
    assert [e["step"] for e in evals] == [1, 2]
    for e in evals:  # 3 problems x 2 samples: pass@1 counts sixths, maj@1 thirds (independently checked elsewhere)
        assert set(e) == {"eval/arithmetic/pass@1", "eval/arithmetic/pass@2", "eval/arithmetic/maj@1",
                          "eval/arithmetic/maj@2", "step", "epoch"}  # fmt: skip
        assert round(6 * e["eval/arithmetic/pass@1"], 9).is_integer()
        assert round(3 * e["eval/arithmetic/maj@1"], 9).is_integer()
    # the training metrics of every step are still logged on their own (evaluation did not flush them)
    train_steps = [e["step"] for e in history if "gbpo/ratio/mean" in e]
    assert train_steps == [1, 2]
    assert trainer.model.training


def test_eval_benchmarks_need_eval_steps(tmp_path, tiny_model_dir):
    from gbpo.train import main

    path = tiny_recipe(tmp_path, tiny_model_dir, eval_benchmarks=["arithmetic"])
    with pytest.raises(ValueError, match="eval_steps"):
        main([str(path)])
