"""`python -m gbpo.train RECIPE.yaml`: recipes parse, unknown keys fail, a tiny run trains and saves."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import trl
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gbpo.evaluation.callback import read_eval_samples
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
    assert (args.num_generations, args.num_train_generations, args.num_iterations, args.learning_rate) == (
        64,
        32,
        10,
        5e-7,
    )
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
                          "eval/arithmetic/maj@2", "eval/arithmetic/pass@1_ci95_low",
                          "eval/arithmetic/pass@1_ci95_high", "step", "epoch"}  # fmt: skip
        low, high = e["eval/arithmetic/pass@1_ci95_low"], e["eval/arithmetic/pass@1_ci95_high"]
        assert 0.0 <= low <= e["eval/arithmetic/pass@1"] <= high <= 1.0
        assert round(6 * e["eval/arithmetic/pass@1"], 9).is_integer()
        assert round(3 * e["eval/arithmetic/maj@1"], 9).is_integer()
    # the training metrics of every step are still logged on their own (evaluation did not flush them)
    train_steps = [e["step"] for e in history if "gbpo/ratio/mean" in e]
    assert train_steps == [1, 2]
    assert trainer.model.training
    # every evaluation's samples are kept, problem by problem, as the logged metrics counted them
    out = tmp_path / "out"
    for e in evals:
        records = read_eval_samples(out / "eval_samples" / f"arithmetic-step{e['step']}.jsonl.gz")
        assert [r["index"] for r in records] == [0, 1, 2]
        assert all(len(r["samples"]) == len(r["extracted"]) == len(r["correct"]) == 2 for r in records)
        assert all({"problem", "answer", "votes"} <= set(r) for r in records)
        assert sum(map(sum, (r["correct"] for r in records))) / 6 == pytest.approx(e["eval/arithmetic/pass@1"])
        assert sum(r["votes"]["1"]["correct"] for r in records) / 3 == pytest.approx(e["eval/arithmetic/maj@1"])
    # provenance: the command as typed, the resolved config, the machine, and the evaluation's share of the time
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == f"python -m gbpo.train {path}" and run["finished"] is True
    assert run["config"]["eval_steps"] == 1 and run["config"]["loss_type"] == "gbpo" and run["config"]["seed"] == 42
    assert run["script_args"]["eval_limit"] == 3 and run["model_args"]["model_name_or_path"] == str(tiny_model_dir)
    assert run["versions"]["trl"] == trl.__version__ and run["versions"]["torch"] is not None
    assert run["machine"]["cpu_model"] and run["machine"]["torch_threads"] >= 1
    assert len(run["git"]["commit"]) == 40 and isinstance(run["git"]["dirty"], bool)  # this checkout
    time = run["time"]
    runtime = next(e["train_runtime"] for e in history if "train_runtime" in e)
    assert time["total_seconds"] == runtime and 0 < time["eval_seconds"] < runtime
    assert time["train_seconds"] == pytest.approx(runtime - time["eval_seconds"])
    # GBPO's target sides per generation batch: fractions of the trained completions that add up to 1
    for step in (e for e in history if "gbpo/target_ratio/above_1" in e):
        sides = [step[f"gbpo/target_ratio/{side}"] for side in ("above_1", "below_1", "at_1")]
        assert all(0 <= v <= 1 for v in sides) and sum(sides) == pytest.approx(1.0)


def test_eval_benchmarks_need_eval_steps(tmp_path, tiny_model_dir):
    from gbpo.train import main

    path = tiny_recipe(tmp_path, tiny_model_dir, eval_benchmarks=["arithmetic"])
    with pytest.raises(ValueError, match="eval_steps"):
        main([str(path)])


# ---------------------------------------------------------------- errors a user can act on, no silent no-ops


def run_cli(capsys, argv):
    """`gbpo.train`'s command in-process: (exit status, stderr lines)."""
    from gbpo.train import cli

    code = cli([str(a) for a in argv])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("gbpo.train: error:")]


def assert_one_error(capsys, argv, *expected):
    code, errors = run_cli(capsys, argv)
    assert code == 2 and len(errors) == 1, errors
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def test_missing_model_path_is_reported_before_the_data_loads(tmp_path, capsys):
    missing = tmp_path / "no-model"
    path = tiny_recipe(tmp_path, missing, dataset_name=str(tmp_path / "no-data.jsonl"))
    assert_one_error(capsys, [path], f"Model path {missing} does not exist.")


def test_unknown_short_model_id_lists_the_known_ones(tmp_path, capsys):
    path = tiny_recipe(tmp_path, "smollm2-13m")
    assert_one_error(capsys, [path], "Unknown model 'smollm2-13m'", "smollm2-135m")


def test_missing_recipe(tmp_path, capsys):
    assert_one_error(capsys, [], "No recipe", "RECIPE.yaml", "smollm2_cpu.yaml")
    assert_one_error(capsys, [tmp_path / "nope.yaml"], f"Recipe {tmp_path / 'nope.yaml'} does not exist.")


def test_malformed_jsonl_row_is_named(tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2" "answer": "4"}\n')
    path = tiny_recipe(tmp_path, tiny_model_dir, dataset_name=str(data))
    assert_one_error(capsys, [path], "line 2, column 19: Expecting ',' delimiter")


def test_config_errors_name_the_keys_the_user_wrote(tmp_path, capsys, tiny_model_dir):
    path = tiny_recipe(tmp_path, tiny_model_dir)
    error = assert_one_error(capsys, [path, "--epsilon", "1.5"], "epsilon must be in (0, 1]", "got 1.5")
    assert "epsilon_low" not in error
    error = assert_one_error(
        capsys, [path, "--num_generations", "3"], "num_generations (3)", "per_device_train_batch_size (4)"
    )
    assert "generation_batch_size" not in error


def test_abbreviated_keys_are_rejected(tmp_path, capsys, tiny_model_dir):
    path = tiny_recipe(tmp_path, tiny_model_dir)
    assert_one_error(capsys, [path, "--max_step", "1"], "--max_step")


def test_command_prints_one_line_and_exits_2(tmp_path, tiny_model_dir):
    path = tiny_recipe(tmp_path, tiny_model_dir)
    result = subprocess.run(
        [sys.executable, "-m", "gbpo.train", str(path), "--max_step", "1"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "error" in line.lower()] == [
        "gbpo.train: error: Some specified arguments are not used by the HfArgumentParser: ['--max_step', '1']"
    ]


def test_dataset_smaller_than_a_generation_batch_is_an_error(tmp_path, capsys, tiny_model_dir):
    path = tiny_recipe(tmp_path, tiny_model_dir, dataset_limit=1, per_device_train_batch_size=8)
    assert_one_error(capsys, [path], "The dataset has 1 problems, but one generation batch needs 2")
    assert not (tmp_path / "out" / "model.safetensors").exists()  # nothing saved as if it had trained


def test_used_output_dir_needs_resume_or_overwrite(tmp_path, capsys, tiny_model_dir):
    from gbpo.train import main

    out = tmp_path / "out"
    (out / "checkpoint-6").mkdir(parents=True)
    (out / "checkpoint-6" / "trainer_state.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"step": 6}\n')
    path = tiny_recipe(tmp_path, tiny_model_dir)
    assert_one_error(capsys, [path], f"output_dir {out} holds an earlier run (checkpoint-6, metrics.jsonl)")
    assert (out / "checkpoint-6").is_dir() and (out / "metrics.jsonl").read_text() == '{"step": 6}\n'  # untouched

    trainer = main([str(path), "--overwrite_output_dir", "true", "--save_strategy", "steps", "--save_steps", "1"])
    assert trainer.state.global_step == 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]  # no stale one
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 2]
    assert "deleting the earlier run" in capsys.readouterr().err


def test_unlabeled_problems_train_with_majority_vote_and_the_card_says_so(tmp_path, tiny_model_dir):
    from gbpo.train import main

    data = tmp_path / "unlabeled.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {i} + 1?"}) + "\n" for i in range(4)))
    path = tiny_recipe(tmp_path, tiny_model_dir, dataset_name=str(data), reward_funcs=["majority_vote"])
    trainer = main([str(path)])
    assert trainer.state.global_step == 2
    out = tmp_path / "out"
    assert_trained_model_saved(out, tiny_model_dir)
    steps = [m for m in trainer.state.log_history if "gbpo/ratio/mean" in m]
    assert len(steps) == 2 and all(0.0 <= m["ttrl/majority_ratio"] <= 1.0 for m in steps)
    assert all("ttrl/label_accuracy" not in m for m in steps)  # no gold answers: no label accuracy

    card = (out / "README.md").read_text()
    assert f"fine-tuned version of `{tiny_model_dir}`" in card and "[None]" not in card
    assert "GBPO" in card and "2604.18578" in card and "Bounded Ratio Reinforcement Learning" in card
    assert "2504.16084" in card and "DeepSeekMath" not in card
    assert f"dataset_name: {data}" in card and "reward_funcs:\n- majority_vote" in card  # the recipe


def test_accuracy_reward_needs_gold_answers(tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "unlabeled.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {i} + 1?"}) + "\n" for i in range(4)))
    path = tiny_recipe(tmp_path, tiny_model_dir, dataset_name=str(data))
    assert_one_error(capsys, [path], "accuracy reward", "without 'answer'")


def test_readme_api_example_runs_offline(tmp_path, tiny_model_dir, monkeypatch):
    """The README's "Use it like TRL" example, as written, with the tiny model for the CPU default and 1 step."""
    import gbpo.models

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Use it like TRL") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", section.index("```python"))]
    assert 'resolve_model("smollm2-135m")' in code and "max_steps=40" in code
    resolved = []
    monkeypatch.setattr(gbpo.models, "resolve_model", lambda name: resolved.append(name) or str(tiny_model_dir))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(code.replace("max_steps=40", "max_steps=1"), namespace)
    assert resolved == ["smollm2-135m"]
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1 and trainer.args.output_dir == "out"
    assert "train_loss" in trainer.state.log_history[-1]
