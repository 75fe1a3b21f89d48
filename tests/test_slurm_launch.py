"""launch/slurm_vllm_server.sh, launch/forward_usr1.sh and launch/wait_for_health.py, run for real with stand-ins for
SLURM's commands and for the vLLM server.

No SLURM here: `scontrol` and `srun` are small scripts on PATH that name three nodes (node 0 is 127.0.0.1, where the
vLLM step's stand-in, tests/scripts/health_server.py, listens) and record each step they are asked to start;
everything else (the layout check, the wait for the server, the signal handling, the exit status) is the scripts' own.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SLURM_SCRIPT = ROOT / "launch" / "slurm_vllm_server.sh"
FORWARD = ROOT / "launch" / "forward_usr1.sh"
WAIT = ROOT / "launch" / "wait_for_health.py"
HEALTH_SERVER = ROOT / "tests" / "scripts" / "health_server.py"

# srun stand-in: one line per step in $SRUN_LOG; the vLLM step runs the stand-in server on $VLLM_PORT with the delays
# in $FAKE_VLLM (tests/scripts/health_server.py); the training step (the one run through forward_usr1.sh) waits for a
# SIGUSR1, records it and exits with 143 as the trainers do.
SRUN = """#!/bin/bash
echo "srun $*" >> "$SRUN_LOG"
if [[ "$*" == *vllm-serve* ]]; then
  exec python "$HEALTH_SERVER" "$VLLM_PORT" $FAKE_VLLM
fi
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fake_slurm(tmp_path, fake_vllm="0.5 1.0", timeout=1200):
    """Stand-ins for SLURM; the vLLM server listens after 0.5 s and is healthy after 1 s unless ``fake_vllm``
    says otherwise (health_server.py's arguments after the port)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\nprintf '127.0.0.1\\nnode1\\nnode2\\n'\n")
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
        "HEALTH_SERVER": str(HEALTH_SERVER),
        "FAKE_VLLM": fake_vllm,
        "VLLM_PORT": str(free_port()),
        "VLLM_LOG": str(tmp_path / "vllm_server.log"),
        "VLLM_SERVER_TIMEOUT": str(timeout),
    }
    return env, log


def test_slurm_script_asks_for_an_early_signal_before_the_time_limit():
    directives = [line for line in SLURM_SCRIPT.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --signal=B:USR1@600" in directives


def test_slurm_example_for_aime_starts_at_three_nodes_and_passes_sigusr1_to_the_trainers(tmp_path):
    """`sbatch --nodes=3 launch/slurm_vllm_server.sh recipes/qwen_math_aime.yaml`: the layout is accepted on 16
    training processes (2 prompts per step: per_device_train_batch_size 32 -> 8), both steps get the node's 64 CPUs,
    the trainers start once the vLLM server's /health answers, with vllm_server_timeout to match the wait, and SLURM's
    SIGUSR1 to the batch script reaches the training step."""
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
    assert f"wait_for_health.py: http://127.0.0.1:{env['VLLM_PORT']}/health answered after" in out
    server_log = Path(env["VLLM_LOG"]).read_text().splitlines()
    assert "GET /health 200" in server_log and server_log.index("GET /health 200") == len(server_log) - 1
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    [vllm] = [line for line in lines if "vllm-serve" in line]
    [train] = [" ".join(line.split()) for line in lines if "forward_usr1.sh" in line]
    [received] = [line for line in lines if not line.startswith("srun ")]
    assert vllm.startswith("srun --nodes=1 --ntasks=1 --cpus-per-task=64 --nodelist=127.0.0.1 trl vllm-serve")
    assert f"--port {env['VLLM_PORT']}" in vllm
    assert train.startswith(
        "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=64 --nodelist=node1,node2 "
        "bash launch/forward_usr1.sh bash -c exec accelerate launch --config_file launch/zero3_multinode.yaml"
    )
    assert "--num_machines 2 --num_processes 16 --machine_rank $SLURM_PROCID --main_process_ip node1" in train
    assert f"--vllm_mode server --vllm_server_host 127.0.0.1 --vllm_server_port {env['VLLM_PORT']}" in train
    assert "--vllm_server_timeout 1200 --resume_from_checkpoint true" in train
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


def test_slurm_script_stops_naming_the_server_log_when_the_server_never_comes_up(tmp_path):
    env, log = fake_slurm(tmp_path, fake_vllm="never", timeout=3)
    start = time.monotonic()
    result = subprocess.run(
        ["bash", str(SLURM_SCRIPT), "recipes/qwen_math_aime.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert f"/health did not answer 200 within 3 s; the server's log is {env['VLLM_LOG']}" in result.stderr
    assert "stand-in vLLM server: loading the model" in result.stderr  # the log's last lines
    assert f"no trainer was started; see the vLLM server's log, {env['VLLM_LOG']}" in result.stderr
    [only] = log.read_text().splitlines()  # the vLLM step only: no trainer started
    assert "vllm-serve" in only
    assert time.monotonic() - start < 120


def run_wait(url, log, *args, timeout=60.0):
    return subprocess.run(
        [sys.executable, str(WAIT), url, "--timeout", str(timeout), "--log", str(log), "--interval", "0.2", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_wait_for_health_returns_once_a_late_server_answers(tmp_path):
    """The stand-in listens after 1 s and answers 503 until 2.5 s: the wait polls through both and returns 0."""
    port, server_log = free_port(), tmp_path / "server.log"
    with server_log.open("w") as out:
        server = subprocess.Popen([sys.executable, str(HEALTH_SERVER), str(port), "1.0", "2.5"], stdout=out)
    try:
        start = time.monotonic()
        result = run_wait(f"http://127.0.0.1:{port}/health", server_log, "--pid", str(server.pid))
        elapsed = time.monotonic() - start
    finally:
        server.kill()
        server.wait()
    assert result.returncode == 0, result.stderr
    assert f"http://127.0.0.1:{port}/health answered after" in result.stdout
    assert 2.0 <= elapsed < 30
    lines = server_log.read_text().splitlines()
    assert "GET /health 503" in lines and lines[-1] == "GET /health 200"


def test_wait_for_health_times_out_naming_the_log_when_nothing_answers(tmp_path):
    port, server_log = free_port(), tmp_path / "vllm_server.log"  # nothing listens on the port
    server_log.write_text("INFO loading weights\nINFO capturing CUDA graphs\n")
    start = time.monotonic()
    result = run_wait(f"http://127.0.0.1:{port}/health", server_log, timeout=1.5)
    elapsed = time.monotonic() - start
    assert result.returncode == 1
    assert f"/health did not answer 200 within 1.5 s; the server's log is {server_log}" in result.stderr
    assert result.stderr.rstrip().endswith("INFO loading weights\nINFO capturing CUDA graphs")
    assert 1.5 <= elapsed < 30


def test_wait_for_health_stops_when_the_server_process_exits(tmp_path):
    """A server step that exits (here: unreaped, as the batch script's srun child would be) ends the wait at once."""
    port, server_log = free_port(), tmp_path / "vllm_server.log"
    server_log.write_text("RuntimeError: CUDA out of memory\n")
    server = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    try:
        time.sleep(1.0)  # it has exited; not reaped until wait()
        start = time.monotonic()
        result = run_wait(f"http://127.0.0.1:{port}/health", server_log, "--pid", str(server.pid), timeout=60)
        elapsed = time.monotonic() - start
    finally:
        server.wait()
    assert result.returncode == 1
    assert f"the server's process {server.pid} exited" in result.stderr and str(server_log) in result.stderr
    assert "RuntimeError: CUDA out of memory" in result.stderr
    assert elapsed < 30


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
