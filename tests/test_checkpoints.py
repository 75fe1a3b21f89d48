"""Preemption and resume: SIGTERM saves a checkpoint and stops; a resumed run ends where an uninterrupted one does."""

import json
import signal
import subprocess
import sys
import time

import pytest
from test_train import tiny_recipe

from gbpo.checkpoints import last_complete_checkpoint, resolve_resume


def make_checkpoint(path, complete=True):
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text("weights")
    if complete:
        (path / "trainer_state.json").write_text("{}")


def test_incomplete_checkpoint_is_never_the_latest(tmp_path):
    make_checkpoint(tmp_path / "checkpoint-2")
    make_checkpoint(tmp_path / "checkpoint-10")
    make_checkpoint(tmp_path / "checkpoint-12", complete=False)  # cut off mid-save
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert (tmp_path / "checkpoint-12.incomplete" / "model.safetensors").is_file()  # moved aside, not deleted
    assert not (tmp_path / "checkpoint-12").exists()
    assert resolve_resume("true", tmp_path) == str(tmp_path / "checkpoint-10")
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("true", tmp_path / "nothing-here") is None
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-12.incomplete"), tmp_path)


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
