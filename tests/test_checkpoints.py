"""Preemption and resume: SIGTERM saves a checkpoint and stops; a resumed run ends where an uninterrupted one does."""

import json
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from test_train import tiny_recipe
from transformers.trainer_utils import rotate_checkpoints

from gbpo.checkpoints import last_complete_checkpoint, resolve_resume


def make_checkpoint(path, complete=True):
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text("weights")
    if complete:
        (path / "trainer_state.json").write_text("{}")


def run_preempted(recipe, monkeypatch, step):
    """``gbpo.train`` on ``recipe`` with a SIGTERM raised while optimizer step ``step`` runs; returns its trainer."""
    import gbpo.checkpoints
    from gbpo.train import main

    class SigtermDuringStep(gbpo.checkpoints.PreemptionCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == step - 1:  # step `step` is about to run
                signal.raise_signal(signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(gbpo.checkpoints, "PreemptionCallback", SigtermDuringStep)
        return main([str(recipe)])


def test_incomplete_checkpoint_is_never_the_latest(tmp_path):
    make_checkpoint(tmp_path / "checkpoint-2")
    make_checkpoint(tmp_path / "checkpoint-10")
    make_checkpoint(tmp_path / "checkpoint-12", complete=False)  # cut off mid-save
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert (tmp_path / "incomplete-checkpoint-12" / "model.safetensors").is_file()  # moved aside, not deleted
    assert not (tmp_path / "checkpoint-12").exists()
    assert resolve_resume("true", tmp_path) == str(tmp_path / "checkpoint-10")
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("true", tmp_path / "nothing-here") is None
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "incomplete-checkpoint-12"), tmp_path)


@pytest.mark.parametrize("save_total_limit", [1, 2])
def test_rotation_never_counts_or_deletes_a_cut_off_checkpoint(tmp_path, save_total_limit):
    """Resume sets checkpoint-4 (cut off) aside; the resumed run saves checkpoint-4 and 5 and the Trainer rotates."""
    make_checkpoint(tmp_path / "checkpoint-2")
    make_checkpoint(tmp_path / "checkpoint-3")
    make_checkpoint(tmp_path / "checkpoint-4", complete=False)
    make_checkpoint(tmp_path / "checkpoint-1.incomplete", complete=False)  # set aside under gbpo 0.1.0's name
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
    for step in (4, 5):  # what Trainer._save_checkpoint does after each save
        make_checkpoint(tmp_path / f"checkpoint-{step}")
        rotate_checkpoints(str(tmp_path), save_total_limit=save_total_limit, use_mtime=True)
    kept = sorted(p.name for p in tmp_path.iterdir())
    newest = [f"checkpoint-{s}" for s in (3, 4, 5)][-save_total_limit:]
    assert kept == sorted([*newest, "incomplete-checkpoint-1", "incomplete-checkpoint-4"])
    assert (tmp_path / "incomplete-checkpoint-4" / "model.safetensors").is_file()


def run_train(recipe, *extra, wait_for=None):
    cmd = [sys.executable, "-m", "gbpo.train", str(recipe), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait_for is not None:  # preempt as soon as the first checkpoint is complete
        deadline = time.time() + 300
        while not (wait_for / "trainer_state.json").is_file():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def steps(out):
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m for m in logs if "loss" in m}


def test_sigterm_checkpoint_then_resume_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    settings = dict(max_steps=30, save_strategy="steps", save_steps=2, dataset_limit=8, lr_scheduler_type="linear")
    reference = tiny_recipe(tmp_path / "reference", tiny_model_dir, **settings)
    code, err = run_train(reference)
    assert code == 0, err[-3000:]
    assert "| 1/30 [" in err  # the progress bar passes step 1 when a run starts from scratch

    recipe = tiny_recipe(tmp_path / "preempted", tiny_model_dir, **settings)
    out = tmp_path / "preempted" / "out"
    code, err = run_train(recipe, wait_for=out / "checkpoint-2")
    assert code == 143, err[-3000:]
    stopped_at = max(steps(out))
    assert 2 <= stopped_at < 30
    state = json.loads((out / f"checkpoint-{stopped_at}" / "trainer_state.json").read_text())
    assert state["global_step"] == stopped_at
    assert not (out / "model.safetensors").exists()  # a preempted run saves a checkpoint, not a final model

    code, err = run_train(recipe, "--resume_from_checkpoint", "true")
    assert code == 0, err[-3000:]
    assert "| 1/30 [" not in err  # it continued from the checkpoint, it did not start over
    resumed, uninterrupted = steps(out), steps(tmp_path / "reference" / "out")
    assert sorted(resumed) == sorted(uninterrupted) == list(range(1, 31))
    # scheduler state: the same learning rate at every step; optimizer and RNG state: the same losses
    for step in range(1, 31):
        assert resumed[step]["learning_rate"] == pytest.approx(uninterrupted[step]["learning_rate"], rel=1e-9)
        assert resumed[step]["loss"] == pytest.approx(uninterrupted[step]["loss"], rel=1e-4, abs=1e-6)


def test_resume_mid_generation_cycle_is_exact(tmp_path, tiny_model_dir, monkeypatch):
    """num_iterations 2 x steps_per_generation 2: steps 1-4 share one generation batch. A SIGTERM during step 3
    saves checkpoint-3 in the middle of that cycle; the resumed run must train step 4 on the buffered batch (second
    PPO epoch), as the uninterrupted run does, and then log the same losses, rewards and end with the same weights."""
    from gbpo.train import main

    settings = dict(
        max_steps=8, num_iterations=2, steps_per_generation=2, dataset_limit=8, save_strategy="no", learning_rate=0.05
    )
    reference = main([str(tiny_recipe(tmp_path / "reference", tiny_model_dir, **settings))])

    recipe = tiny_recipe(tmp_path / "preempted", tiny_model_dir, **settings)
    out = tmp_path / "preempted" / "out"
    preempted = run_preempted(recipe, monkeypatch, step=3)
    assert preempted.preempted and preempted.state.global_step == 3
    assert (out / "checkpoint-3" / "generation_buffer_0.pt").is_file()  # mid-cycle: the buffer is in the checkpoint

    resumed = main([str(recipe), "--resume_from_checkpoint", "true"])
    assert not resumed.preempted and resumed.state.global_step == 8
    got, want = steps(out), {m["step"]: m for m in reference.state.log_history if "loss" in m}
    assert sorted(got) == sorted(want) == list(range(1, 9))
    for step in range(1, 9):
        for key in ("loss", "reward", "reward_std", "grad_norm", "gbpo/ratio/mean", "entropy"):
            assert (key in got[step]) == (key in want[step]), (step, key)
            if key in want[step]:
                assert got[step][key] == pytest.approx(want[step][key], rel=1e-5, abs=1e-7), (step, key)
    # rewards are logged on generation steps only (1 and 5): step 4 trained on step 1's batch in both runs
    assert [s for s in range(1, 9) if "reward" in want[s]] == [1, 5]
    trained, expected = resumed.model.state_dict(), reference.model.state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-5, atol=1e-7, msg=name)


def test_two_processes_resume_mid_cycle_from_their_own_buffers(tmp_path, tiny_model_dir):
    """2 processes (torchrun, gloo on CPU): each rank saves its share of the generation batch; resuming from the
    mid-cycle checkpoint-3 logs the same steps 4-6 and ends with the same weights as the uninterrupted run."""
    import os
    import shutil

    from safetensors.torch import load_file
    from test_distributed import free_port

    settings = dict(
        max_steps=6, num_iterations=2, steps_per_generation=2, dataset_limit=8, learning_rate=0.05,
        save_strategy="steps", save_steps=1,
    )  # fmt: skip
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def train(recipe, *extra):
        cmd = [*launch, "--master_port", str(free_port()), "-m", "gbpo.train", str(recipe), *extra]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]

    train(tiny_recipe(tmp_path / "reference", tiny_model_dir, **settings))
    reference = tmp_path / "reference" / "out"
    checkpoint = reference / "checkpoint-3"
    buffers = {p.name for p in checkpoint.glob("generation_buffer_*.pt")}
    assert buffers == {"generation_buffer_0.pt", "generation_buffer_1.pt"}  # one per rank

    resumed = tmp_path / "resumed" / "out"
    shutil.copytree(checkpoint, resumed / "checkpoint-3")
    train(tiny_recipe(tmp_path / "resumed", tiny_model_dir, **settings), "--resume_from_checkpoint", "true")
    got, want = steps(resumed), steps(reference)
    for step in (4, 5, 6):
        for key in ("loss", "reward", "grad_norm"):
            assert (key in got[step]) == (key in want[step]), (step, key)
            if key in want[step]:
                assert got[step][key] == pytest.approx(want[step][key], rel=1e-5, abs=1e-7), (step, key)
    trained, expected = load_file(resumed / "model.safetensors"), load_file(reference / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-5, atol=1e-7, msg=name)


def test_sigusr1_and_sigterm_both_stop_at_the_step_end_and_the_handlers_are_restored():
    from transformers import TrainerControl

    from gbpo.checkpoints import PreemptionCallback

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        callback = PreemptionCallback()
        callback.on_train_begin(None, None, TrainerControl())
        control = callback.on_step_end(SimpleNamespace(device="cpu"), None, TrainerControl())
        assert not (control.should_save or control.should_training_stop or callback.preempted)
        signal.raise_signal(sig)  # the handler only sets a flag: the process goes on
        control = callback.on_step_end(SimpleNamespace(device="cpu"), None, TrainerControl())
        assert control.should_save and control.should_training_stop and callback.preempted
        assert callback.received_signal == sig
        callback.on_train_end(None, None, control)
        assert {s: signal.getsignal(s) for s in before} == before


def test_sigusr1_during_a_step_saves_a_complete_checkpoint_and_exits_143(tmp_path, tiny_model_dir, monkeypatch):
    """SLURM's early warning (sbatch --signal=B:USR1@600, passed on by launch/slurm_vllm_server.sh) during step 2
    of 4: step 2 finishes, checkpoint-2 is complete, no final model, status 143 (as for SIGTERM)."""
    import gbpo.checkpoints
    from gbpo.train import cli

    class Sigusr1DuringStep2(gbpo.checkpoints.PreemptionCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                signal.raise_signal(signal.SIGUSR1)

    monkeypatch.setattr(gbpo.checkpoints, "PreemptionCallback", Sigusr1DuringStep2)
    recipe = tiny_recipe(tmp_path, tiny_model_dir, max_steps=4)
    assert cli([str(recipe)]) == 143
    out = tmp_path / "out"
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert sorted(steps(out)) == [1, 2] and not (out / "model.safetensors").exists()
