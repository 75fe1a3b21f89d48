"""``dtype: auto`` on a CPU (gbpo/precision.py): the decision from the probe's speeds and which recipe keys win.

The probe is replaced by fixed speeds, so nothing here depends on this machine's timing.
"""

from pathlib import Path

import pytest
import torch

from gbpo.precision import MIN_BF16_SPEEDUP, choose, explicit_dtype_keys, probe_matmul_speed, resolve_auto_dtype
from gbpo.train import _cpu_precision, _parse

RECIPE = str(Path(__file__).resolve().parent.parent / "recipes" / "smollm2_cpu.yaml")
AMX = {"float32": 20.0, "bfloat16": 220.0}  # bf16 11x faster, as on CPUs with AMX
NO_AMX = {"float32": 20.0, "bfloat16": 0.8}  # bf16 25x slower; this AMD EPYC measures 50-100x


def test_bf16_only_when_at_least_one_and_a_half_times_faster():
    assert MIN_BF16_SPEEDUP == 1.5
    assert choose(AMX) == "bfloat16"
    assert choose(NO_AMX) == "float32"
    assert choose({"float32": 20.0, "bfloat16": 30.0}) == "bfloat16"  # exactly 1.5x
    assert choose({"float32": 20.0, "bfloat16": 29.9}) == "float32"  # 1.495x: within a noisy probe's reach
    with pytest.raises(ValueError, match="bfloat16"):
        choose({"float32": 20.0})
    with pytest.raises(ValueError, match="float32"):
        choose({"float32": 0.0, "bfloat16": 1.0})


def test_auto_stands_for_mixed_bf16_generation_and_fp32_training_or_fp32_for_both():
    keys, line = resolve_auto_dtype({}, AMX)
    assert keys == {
        "dtype": "float32",
        "bf16": False,  # never bf16 training on speed alone: its rounding moves the ratio (benchmarks/precision.py)
        "vllm_dtype": "bfloat16",
        "vllm_importance_sampling_correction": True,
    }
    assert line == (
        "dtype auto: bf16 matmuls 220.0 GFLOP/s, fp32 20.0 GFLOP/s (11.00x; bf16 needs >= 1.5x): mixed (bf16 "
        "generation is faster here; training stays fp32, where the ratio measures the policy's change and not bf16's "
        "rounding (benchmarks/precision.py)). Training in fp32 over fp32 weights, generating in bfloat16."
    )
    keys, line = resolve_auto_dtype({}, NO_AMX)
    assert keys == {"dtype": "float32", "bf16": False, "vllm_dtype": "float32"}
    assert line == (
        "dtype auto: bf16 matmuls 0.8 GFLOP/s, fp32 20.0 GFLOP/s (0.04x; bf16 needs >= 1.5x): fp32 (bf16 is not "
        "faster here). Training in fp32 over fp32 weights, generating in float32."
    )


def test_keys_the_user_set_are_kept_and_said():
    keys, line = resolve_auto_dtype({"dtype": "auto", "bf16": False}, AMX)
    assert keys == {"dtype": "float32", "vllm_dtype": "bfloat16", "vllm_importance_sampling_correction": True}
    assert line.endswith("Training in fp32 over fp32 weights, generating in bfloat16; kept as set: bf16: False.")
    keys, line = resolve_auto_dtype({"vllm_dtype": "bfloat16", "vllm_importance_sampling_correction": False}, NO_AMX)
    assert keys == {"dtype": "float32", "bf16": False}
    assert line.endswith("generating in bfloat16; kept as set: vllm_dtype: bfloat16.")


def parse_recipe(*overrides, speeds=None):
    """The CPU default recipe through gbpo.train's parsing and dtype resolution, with a fixed probe result."""
    argv = [RECIPE, *overrides]
    script_args, training_args, model_args, user_keys = _parse(argv)
    probes = []

    def probe():
        probes.append(1)
        return speeds

    (script_args, training_args, model_args), line = _cpu_precision(
        argv, (script_args, training_args, model_args), user_keys, probe
    )
    return training_args, model_args, line, len(probes)


def test_cpu_default_recipe_on_a_cpu_without_amx_trains_and_generates_in_fp32():
    args, model_args, line, probes = parse_recipe(speeds=NO_AMX)
    assert probes == 1 and line.startswith("dtype auto: ")
    assert (model_args.dtype, args.bf16, args.vllm_dtype) == ("float32", False, "float32")
    assert args.vllm_importance_sampling_correction is True  # the recipe's own key


def test_cpu_default_recipe_on_a_cpu_with_amx_generates_in_bf16_and_trains_in_fp32():
    args, model_args, _, _ = parse_recipe(speeds=AMX)
    assert (model_args.dtype, args.bf16, args.vllm_dtype) == ("float32", False, "bfloat16")
    assert args.mixed_precision == "no"  # no autocast: log-probs and training in fp32
    assert args.vllm_importance_sampling_correction is True


def test_explicit_keys_on_the_command_line_win_over_the_probe():
    args, model_args, _, _ = parse_recipe("--vllm_dtype", "float32", speeds=AMX)
    assert (model_args.dtype, args.bf16, args.vllm_dtype) == ("float32", False, "float32")
    args, _, _, _ = parse_recipe("--bf16", "false", speeds=AMX)
    assert (args.bf16, args.vllm_dtype) == (False, "bfloat16")
    args, _, _, _ = parse_recipe("--bf16", "true", speeds=NO_AMX)
    assert (args.bf16, args.vllm_dtype) == (True, "float32")


def test_an_explicit_dtype_does_not_probe_and_sets_the_keys_left_unset():
    # TRL's default bf16 (autocast) would be on: an explicit fp32 run on a CPU stays fp32, as the recipe was before
    args, model_args, line, probes = parse_recipe("--dtype", "float32", speeds=AMX)
    assert (probes, model_args.dtype, args.bf16, args.vllm_dtype) == (0, "float32", False, "float32")
    assert line == "dtype float32 (as set): bf16 false, vllm_dtype float32."
    args, _, line, _ = parse_recipe("--dtype", "float32", "--bf16", "true", speeds=AMX)
    assert (args.bf16, args.vllm_dtype) == (True, "float32")
    assert line == "dtype float32 (as set): bf16 true, vllm_dtype float32."
    args, model_args, _, probes = parse_recipe("--dtype", "bfloat16", speeds=NO_AMX)
    assert (probes, model_args.dtype, args.bf16, args.vllm_dtype) == (0, "bfloat16", True, "bfloat16")
    assert explicit_dtype_keys({"vllm_dtype": "float32"}, "float16") == (
        {"bf16": False},
        "dtype float16 (as set): bf16 false, vllm_dtype float32.",
    )


def test_off_the_cpu_auto_keeps_transformers_meaning():
    # (bf16 false: TRL's default bf16 needs a GPU to parse, and this test runs on any machine)
    _, model_args, line, probes = parse_recipe("--use_cpu", "false", "--bf16", "false", speeds=AMX)
    assert (probes, line, model_args.dtype) == (0, None, "auto")  # the checkpoint's dtype, as transformers reads it


def test_the_probe_reports_both_speeds():
    speeds = probe_matmul_speed(size=32, budget_s=0.01, max_reps=2)
    assert sorted(speeds) == ["bfloat16", "float32"]
    assert all(value > 0 for value in speeds.values())


def test_gbpo_train_probes_once_and_prints_one_line(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """The CPU default's keys on the tiny model: one training step, the probe replaced by this CPU's kind of speeds."""
    import yaml

    import gbpo.precision
    from gbpo.train import main

    calls = []
    monkeypatch.setattr(gbpo.precision, "probe_matmul_speed", lambda: calls.append(1) or NO_AMX)
    recipe = {
        "model_name_or_path": str(tiny_model_dir), "dtype": "auto", "use_cpu": True, "dataset_name": "arithmetic",
        "dataset_limit": 4, "num_generations": 4, "per_device_train_batch_size": 4, "max_completion_length": 4,
        "max_steps": 1, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
        "output_dir": str(tmp_path / "out"),
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    trainer = main([str(path)])
    assert calls == [1]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dtype auto:")]
    assert printed == [
        "dtype auto: bf16 matmuls 0.8 GFLOP/s, fp32 20.0 GFLOP/s (0.04x; bf16 needs >= 1.5x): fp32 (bf16 is not "
        "faster here). Training in fp32 over fp32 weights, generating in float32."
    ]
    assert (trainer.args.bf16, trainer.args.vllm_dtype) == (False, "float32")
    assert trainer.model.dtype == torch.float32
    assert trainer.accelerator.mixed_precision == "no"  # no autocast
