"""launch/slurm_vllm_server.sh and launch/forward_usr1.sh, run for real with stand-ins for SLURM's commands.

No SLURM here: `scontrol` and `srun` are small scripts on PATH that name three nodes and record each step they are
asked to start; everything else (the layout check, the signal handling, the exit status) is the scripts' own.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SLURM_SCRIPT = ROOT / "launch" / "slurm_vllm_server.sh"
FORWARD = ROOT / "launch" / "forward_usr1.sh"

# srun stand-in: one line per step in $SRUN_LOG; the training step (the one run through forward_usr1.sh) waits for a
# SIGUSR1, records it and exits with 143 as the trainers do; the vLLM step waits to be stopped.
SRUN = """#!/bin/bash
echo "srun $*" >> "$SRUN_LOG"
if [[ "$*" == *forward_usr1.sh* ]]; then
  trap 'echo "training step got USR1" >> "$SRUN_LOG"; exit 143' USR1
fi
for _ in $(seq 600); do sleep 0.1; done
exit 1
"""


def wait_for(predicate, timeout=120.0, what=""):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\nprintf 'node0\\nnode1\\nnode2\\n'\n")
    (bin_dir / "srun").write_text(SRUN)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    log = tmp_path / "srun.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node[0-2]",  # sbatch --nodes=3
        "SLURM_CPUS_ON_NODE": "64",
        "SRUN_LOG": str(log),
        "PYTHONPATH": str(ROOT),
    }
    return env, log


def test_slurm_script_asks_for_an_early_signal_before_the_time_limit():
    directives = [line for line in SLURM_SCRIPT.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --signal=B:USR1@600" in directives


def test_slurm_example_for_aime_starts_at_three_nodes_and_passes_sigusr1_to_the_trainers(tmp_path):
    """`sbatch --nodes=3 launch/slurm_vllm_server.sh recipes/qwen_math_aime.yaml`: the layout is accepted on 16
    training processes (2 prompts per step: per_device_train_batch_size 32 -> 8), both steps get the node's 64 CPUs,
    and SLURM's SIGUSR1 to the batch script reaches the training step."""
    env, log = fake_slurm(tmp_path)
    proc = subprocess.Popen(
        ["bash", str(SLURM_SCRIPT), "recipes/qwen_math_aime.yaml"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: log.is_file() and len(log.read_text().splitlines()) == 2 or proc.poll() is not None, what="srun")
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.5)  # the trap is set right after the training step starts
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "per_device_train_batch_size 32 -> 8." in out  # gbpo.layout accepted the layout, and said what changed
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    [vllm] = [line for line in lines if "vllm-serve" in line]
    [train] = [" ".join(line.split()) for line in lines if "forward_usr1.sh" in line]
    [received] = [line for line in lines if not line.startswith("srun ")]
    assert vllm.startswith("srun --nodes=1 --ntasks=1 --cpus-per-task=64 --nodelist=node0 trl vllm-serve")
    assert train.startswith(
        "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=64 --nodelist=node1,node2 "
        "bash launch/forward_usr1.sh bash -c exec accelerate launch --config_file launch/zero3_multinode.yaml"
    )
    assert "--num_machines 2 --num_processes 16 --machine_rank $SLURM_PROCID --main_process_ip node1" in train
    assert "--vllm_mode server --vllm_server_host node0" in train and "--resume_from_checkpoint true" in train
    assert received == "training step got USR1"
    assert "submit the same command again to continue" in err


def test_slurm_script_stops_before_any_step_when_the_layout_cannot_hold(tmp_path):
    env, log = fake_slurm(tmp_path)
    recipe = tmp_path / "aime.yaml"
    keys = yaml.safe_load((ROOT / "recipes" / "qwen_math_aime.yaml").read_text())
    recipe.write_text(yaml.safe_dump({**keys, "prompts_per_generation": 32}))  # AIME has 30 problems
    result = subprocess.run(
        ["bash", str(SLURM_SCRIPT), str(recipe)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "gbpo.layout: error: One generation batch takes 32 prompts and the data set has 30" in result.stderr
    assert not log.exists()  # no srun step was started


LAUNCHER = """
import signal, subprocess, sys
out = sys.argv[1]
open(out + ".launcher", "w").write(str(signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN))
sys.exit(subprocess.Popen([sys.executable, "-c", sys.argv[2], out]).wait())
"""
WORKER = """
import signal, sys, time
out = sys.argv[1]
got = []
signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))  # as PreemptionCallback does
open(out + ".ready", "w").write("ready")
deadline = time.time() + 60
while not got and time.time() < deadline:
    time.sleep(0.05)
open(out + ".worker", "w").write(str(got))
sys.exit(143 if got else 1)
"""


def test_forward_usr1_signals_the_workers_and_not_their_launcher(tmp_path):
    """A launcher that, like torchrun's agent, would act on SIGUSR1 (here: the default action, dying) runs with it
    ignored; the worker it started gets the SIGUSR1 sent to forward_usr1.sh and exits 143, which the launcher and
    forward_usr1.sh pass on as their own status."""
    out = str(tmp_path / "run")
    proc = subprocess.Popen(["bash", str(FORWARD), sys.executable, "-c", LAUNCHER, out, WORKER], text=True)
    wait_for(lambda: Path(out + ".ready").is_file() or proc.poll() is not None, what="the worker")
    assert proc.poll() is None
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=60) == 143
    assert Path(out + ".launcher").read_text() == "True"  # SIGUSR1 is ignored by the launcher
    assert Path(out + ".worker").read_text() == f"[{int(signal.SIGUSR1)}]"


@pytest.mark.parametrize("status", [0, 3])
def test_forward_usr1_exits_with_the_launchers_status(status):
    assert subprocess.run(["bash", str(FORWARD), "bash", "-c", f"exit {status}"], timeout=60).returncode == status
