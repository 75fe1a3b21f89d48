"""gbpo.layout: the recipe's prompts per optimizer step and per generation on any number of processes, by hand."""

from pathlib import Path

import pytest
import yaml

from gbpo.layout import layout_keys, main, plan_layout

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
LAUNCH = ROOT / "launch"
WORLD_SIZES = (1, 4, 8, 16, 32)
PROBLEMS = {"aime24": 30, "amc": 83, "math500": 500, "arithmetic": 200}

# (per_device_train_batch_size, gradient_accumulation_steps, steps_per_generation) per world size, worked by hand:
# completions per optimizer step C = prompts_per_step x num_generations, C / W per process; the micro-batch is the
# largest divisor of C / W at most the recipe's per_device_train_batch_size (and even, for 64 votes / 32 trained);
# steps_per_generation = gradient_accumulation_steps x prompts_per_generation / prompts_per_step.
# AIME and AMC: C = 2 x 64 = 128, cap 32, 4 steps per generation. MATH-500: C = 1 x 64 = 64, cap 16, 32 steps.
# CPU default: C = 2 x 8 = 16, cap 16, 4 steps (4 / 1 as written); 16 completions cannot split over 32 processes.
EXPECTED = {
    "qwen_math_aime.yaml": {1: (32, 4, 16), 4: (32, 1, 4), 8: (16, 1, 4), 16: (8, 1, 4), 32: (4, 1, 4)},
    "qwen_math_amc.yaml": {1: (32, 4, 16), 4: (32, 1, 4), 8: (16, 1, 4), 16: (8, 1, 4), 32: (4, 1, 4)},
    "qwen_math_math500.yaml": {1: (16, 4, 128), 4: (16, 1, 32), 8: (8, 1, 32), 16: (4, 1, 32), 32: (2, 1, 32)},
    "smollm2_cpu.yaml": {1: (4, 4, 16), 4: (4, 1, 4), 8: (2, 1, 4), 16: (1, 1, 4), 32: "prompts_per_step"},
}
PAPER = {"qwen_math_aime.yaml": (2, 8), "qwen_math_amc.yaml": (2, 8), "qwen_math_math500.yaml": (1, 32)}


def recipe_keys(name):
    return yaml.safe_load((RECIPES / name).read_text())


def launch_settings():
    """Each launch/ setting with the gbpo.train keys it adds on the command line and its own number of processes."""
    settings = {}
    for path in sorted(LAUNCH.glob("*.yaml")):
        settings[path.name] = ((), yaml.safe_load(path.read_text())["num_processes"])
    script = (LAUNCH / "slurm_vllm_server.sh").read_text()
    line = next(line for line in script.splitlines() if "-m gbpo.train" in line)
    added = tuple(arg[2:] for arg in line.split() if arg.startswith("--"))
    settings["slurm_vllm_server.sh"] = (added, 16)  # sbatch --nodes=3: 2 training nodes x 8 GPUs
    return settings


def test_every_shipped_recipe_and_launch_setting_is_in_the_matrix():
    assert set(EXPECTED) == {p.name for p in RECIPES.glob("*.yaml")}
    assert set(launch_settings()) == {p.name for p in LAUNCH.glob("*.yaml")} | {"slurm_vllm_server.sh"}


@pytest.mark.parametrize("launch", sorted(launch_settings()))
@pytest.mark.parametrize("recipe", sorted(EXPECTED))
@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_recipe_x_launch_x_world_size_keeps_the_prompts_or_names_the_key(recipe, launch, world_size):
    added, _ = launch_settings()[launch]
    assert not {"per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation"} & set(added)
    keys = recipe_keys(recipe)
    expected = EXPECTED[recipe][world_size]
    num_prompts = PROBLEMS[keys["dataset_name"]]
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            plan_layout(layout_keys(keys), world_size, fixed=added, num_prompts=num_prompts)
        return
    layout = plan_layout(layout_keys(keys), world_size, fixed=added, num_prompts=num_prompts)
    b, g, s = expected
    assert (layout.per_device_train_batch_size, layout.gradient_accumulation_steps, layout.steps_per_generation) == (
        b,
        g,
        s,
    )
    n, m = keys["num_generations"], keys.get("num_train_generations") or keys["num_generations"]
    # the recipe's prompts per optimizer step and per generation, on every world size
    assert layout.prompts_per_step == keys["prompts_per_step"]
    assert layout.prompts_per_generation == keys.get("prompts_per_generation", keys["prompts_per_step"] * 4)
    assert b * world_size * g == keys["prompts_per_step"] * n
    # whole groups per generation batch, whole trained rows per process and micro-batch, the generation fits the data
    assert layout.completions_per_generation % n == 0 and (b * m) % n == 0
    assert layout.prompts_per_generation <= num_prompts
    # what changed is exactly what differs from the recipe as written
    written = {
        k: keys[k] for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation")
    }
    assert {k: new for k, (_, new) in layout.changes.items()} == {
        k: v for k, v in zip(written, expected, strict=True) if written[k] != v
    }


@pytest.mark.parametrize("recipe", sorted(PAPER))
def test_paper_recipes_as_written_are_the_4_gpu_layout_of_the_paper(recipe):
    layout = plan_layout(layout_keys(recipe_keys(recipe)), 4)
    assert layout.changes == {} and layout.change_line() == ""
    assert (layout.prompts_per_step, layout.prompts_per_generation) == PAPER[recipe]
    assert layout.trained_rows_per_process == layout.per_device_train_batch_size / 2  # 32 of 64 votes trained


def test_launch_configs_own_process_counts_hold_for_the_paper_recipes():
    for _, (_, processes) in launch_settings().items():
        for recipe in PAPER:
            assert plan_layout(layout_keys(recipe_keys(recipe)), processes).prompts_per_step == PAPER[recipe][0]


def test_change_line_says_what_changed_in_one_line():
    layout = plan_layout(layout_keys(recipe_keys("qwen_math_aime.yaml")), 1)
    line = layout.change_line()
    assert "\n" not in line
    assert line.startswith("batch layout for 1 process(es): 2 prompts x 64 = 128 completions per optimizer step")
    assert line.endswith("gradient_accumulation_steps 1 -> 4, steps_per_generation 4 -> 16.")
    assert layout.overrides() == ["--gradient_accumulation_steps", "4", "--steps_per_generation", "16"]
    unset = plan_layout(layout_keys({**recipe_keys("qwen_math_aime.yaml"), "steps_per_generation": None}), 1)
    assert unset.change_line().endswith("steps_per_generation unset -> 16.")


AIME = recipe_keys("qwen_math_aime.yaml")


@pytest.mark.parametrize(
    ("keys", "processes", "fixed", "match"),
    [
        # 2 x 64 = 128 completions over 3 processes; prompts_per_step must be a multiple of 3 / gcd(3, 64) = 3
        ({}, 3, (), r"128 completions per optimizer step do not split evenly over 3 processes.*multiple of 3"),
        # 128 processes get 1 completion each; 64 votes / 32 trained need micro-batches of 2: at most 64 processes
        ({}, 128, (), r"divides 64, or set prompts_per_step to a multiple of 4"),
        ({"prompts_per_generation": 9}, 4, (), r"prompts_per_generation \(9\) must be a multiple of prompts_per_step"),
        (
            {"prompts_per_generation": 32},
            16,
            (),
            r"takes 32 prompts and the data set has 30: lower prompts_per_generation",
        ),
        ({"generation_batch_size": 512}, 4, (), r"remove generation_batch_size"),
        ({"prompts_per_step": None}, 4, (), r"prompts_per_generation is set without prompts_per_step"),
        # command-line keys are never changed: 16 processes x 32 rows is 512 completions per step, not 128
        ({}, 16, ("per_device_train_batch_size",), r"per_device_train_batch_size 32 \(command line\).*\[2, 4, 8\]"),
        ({"gradient_accumulation_steps": 3}, 4, ("gradient_accumulation_steps",), r"pass one of \[1, 2, 4, 8, 16\]"),
        ({}, 1, ("steps_per_generation",), r"pass --steps_per_generation 16"),
        (
            {"gradient_accumulation_steps": 2},
            4,
            ("per_device_train_batch_size", "gradient_accumulation_steps"),
            r"32 x gradient_accumulation_steps 2 \(both on the command line\) must be the 32 completions",
        ),
        ({"per_device_train_batch_size": 1}, 4, (), r"set per_device_train_batch_size to at least 2"),
    ],
)
def test_layouts_that_cannot_hold_name_the_key_and_the_fix(keys, processes, fixed, match):
    with pytest.raises(ValueError, match=match):
        plan_layout(layout_keys({**AIME, **keys}), processes, fixed=fixed, num_prompts=30)


def test_command_line_keys_that_fit_are_kept_and_the_rest_derived():
    # 4 processes, micro-batches of 16 on the command line: 32 completions per process per step -> 2 micro-batches
    layout = plan_layout(
        layout_keys({**AIME, "per_device_train_batch_size": 16}), 4, fixed={"per_device_train_batch_size"}
    )
    assert (layout.per_device_train_batch_size, layout.gradient_accumulation_steps, layout.steps_per_generation) == (
        16,
        2,
        8,
    )
    assert (layout.prompts_per_step, layout.prompts_per_generation) == (2, 8)
    # gradient_accumulation_steps 2 on 8 processes: 16 completions per process per step -> micro-batches of 8
    layout = plan_layout(
        layout_keys({**AIME, "gradient_accumulation_steps": 2}), 8, fixed={"gradient_accumulation_steps"}
    )
    assert (layout.per_device_train_batch_size, layout.steps_per_generation, layout.prompts_per_step) == (8, 8, 2)


def test_without_prompts_per_step_the_keys_are_taken_as_written():
    keys = {"per_device_train_batch_size": 4, "num_generations": 4, "gradient_accumulation_steps": 1}
    layout = plan_layout(layout_keys(keys), 2)
    assert layout.changes == {} and (layout.completions_per_generation, layout.prompts_per_step) == (8, 2)
    # TRL's rule, restated in the recipe's keys: 3 x 1 x 1 completions are not whole groups of 4
    with pytest.raises(ValueError, match=r"num_generations \(4\) must divide the 3 completions.*prompts_per_step"):
        plan_layout(layout_keys({**keys, "per_device_train_batch_size": 3}), 1)


def test_prompts_per_generation_defaults_to_the_recipes_steps_per_generation():
    """The CPU default states prompts_per_step only; a study that pins steps_per_generation 1 on the command line (as
    docs/study/epochs.yaml does) keeps one optimizer step per generation batch, so nothing changes."""
    cpu = recipe_keys("smollm2_cpu.yaml")
    assert "prompts_per_generation" not in cpu
    pinned = {**cpu, "per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "steps_per_generation": 1}
    fixed = {"per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation"}
    layout = plan_layout(layout_keys(pinned), 1, fixed=fixed)
    assert layout.changes == {} and (layout.prompts_per_step, layout.prompts_per_generation) == (2, 2)


def test_layout_command_prints_the_slurm_example_and_errors_in_one_line(capsys):
    """`sbatch --nodes=3 launch/slurm_vllm_server.sh recipes/qwen_math_aime.yaml`: 16 training processes."""
    assert main([str(RECIPES / "qwen_math_aime.yaml"), "--num_processes", "16"]) == 0
    out = capsys.readouterr().out.strip()
    assert "\n" not in out and out.endswith("per_device_train_batch_size 32 -> 8.")
    assert "2 prompts x 64 = 128 completions per optimizer step" in out and "8 prompts = 512 completions" in out
    assert main([str(RECIPES / "qwen_math_aime.yaml"), "--num_processes", "16", "--prompts_per_generation", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "gbpo.layout: error: One generation batch takes 32 prompts and the data set has 30: lower "
        "prompts_per_generation, or use more problems (dataset_limit)."
    )


def test_train_derives_the_layout_says_it_in_one_line_and_trains(tmp_path, tiny_model_dir, capsys):
    """1 process, groups of 4, prompts_per_step 2: 8 completions per step, micro-batches of at most 4 ->
    gradient_accumulation_steps 2; prompts_per_generation 2 x (1 / 1) = 2 -> steps_per_generation 2."""
    from test_train import tiny_recipe

    from gbpo.train import main

    recipe = tiny_recipe(tmp_path, tiny_model_dir, prompts_per_step=2, max_steps=2)
    trainer = main([str(recipe)])
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if "batch layout" in line]
    assert line.startswith("gbpo.train: batch layout for 1 process(es): 2 prompts x 4 = 8 completions")
    assert line.endswith("gradient_accumulation_steps 1 -> 2, steps_per_generation unset -> 2.")
    args = trainer.args
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (4, 2, 2)
    assert args.generation_batch_size == 8 and trainer.state.global_step == 2


def test_train_never_changes_a_command_line_key(tmp_path, tiny_model_dir, capsys):
    from test_train import tiny_recipe

    from gbpo.train import cli

    recipe = tiny_recipe(tmp_path, tiny_model_dir, prompts_per_step=2)
    assert cli([str(recipe), "--per_device_train_batch_size", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gbpo.train: error: per_device_train_batch_size 16 (command line) does not give ")
    assert err.endswith("so pass one of [1, 2, 4, 8] (gradient_accumulation_steps follows), or leave it to the recipe.")
