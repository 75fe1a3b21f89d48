"""How often a two-rank gloo run aborts at exit, with and without `gbpo.distributed.shutdown_distributed`.

    python benchmarks/exit_race.py --runs 25            # with a CPU-load process, as the race needs
    python benchmarks/exit_race.py --runs 25 --no-load

Each run is `torchrun --nproc_per_node 2` of this file in worker mode: 50 all_gathers into tensors that Python drops
at once, the group held by a module-level reference (as DeepSpeed and the parameters hold theirs), then one of three
exits, interleaved run by run under the same load:

- ``none``: the script just ends (what tests/scripts/distributed_run.py did);
- ``destroy``: ``torch.distributed.destroy_process_group()`` (what accelerate's ``end_training`` does);
- ``shutdown_distributed``: what ``gbpo.train`` now does.

A run fails when torchrun reports a failure; the table counts those whose log has "terminate called without an
active exception" (a gloo worker killed while taking the GIL in interpreter shutdown). Run on demand, not in CI: the
counts depend on the load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = ("none", "destroy", "shutdown_distributed")
ABORT = "terminate called without an active exception"
HELD = []  # the worker's group, referenced until the interpreter shuts down (as DeepSpeed and the parameters do)


def worker(arm: str) -> None:
    import torch
    import torch.distributed as dist

    from gbpo.distributed import shutdown_distributed

    dist.init_process_group("gloo")
    HELD.append(dist.group.WORLD)  # so destroy_process_group() does not free the group and join its threads
    for _ in range(50):
        out = [torch.empty(10) for _ in range(dist.get_world_size())]
        dist.all_gather(out, torch.ones(10))
        del out
    start = time.monotonic()
    if arm == "destroy":
        dist.destroy_process_group()
    elif arm == "shutdown_distributed":
        shutdown_distributed()
    print(f"exit path: {time.monotonic() - start:.3f} s", flush=True)


def burn() -> None:
    """Two threads of matmuls until killed: the load under which a gloo worker is scheduled late."""
    import torch

    torch.set_num_threads(2)
    a = torch.randn(1024, 1024)
    while True:
        a = (a @ a).tanh()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=25, help="runs per exit")
    parser.add_argument("--no-load", action="store_true", help="no CPU-load process beside the runs")
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--burn", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    if args.burn:
        return burn()

    from tqdm import tqdm

    sys.path.insert(0, str(Path(__file__).parent))
    from cpu import cpu_info

    load = None if args.no_load else subprocess.Popen([sys.executable, __file__, "--burn"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    failed = dict.fromkeys(ARMS, 0)
    aborted = dict.fromkeys(ARMS, 0)
    exit_s = dict.fromkeys(ARMS, 0.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for run in tqdm(range(args.runs), desc="rounds"):
                for arm in ARMS:
                    log = Path(tmp) / f"{arm}-{run}.log"
                    command = [
                        sys.executable,
                        "-m",
                        "torch.distributed.run",
                        "--nproc_per_node",
                        "2",
                        "--master_port",
                        str(30000 + run % 1000),
                    ]
                    with log.open("w") as out:
                        code = subprocess.run(
                            [*command, __file__, "--worker", arm], env=env, stdout=out, stderr=subprocess.STDOUT
                        ).returncode
                    text = log.read_text()
                    failed[arm] += code != 0
                    aborted[arm] += ABORT in text
                    times = [float(line.split()[2]) for line in text.splitlines() if line.startswith("exit path:")]
                    exit_s[arm] = max([exit_s[arm], *times])
    finally:
        if load is not None:
            load.kill()
    print(f"CPU: {cpu_info()['model_name']}; {args.runs} runs per exit, {'no load' if args.no_load else 'under load'}")
    print(f"{'exit':<22} {'failed':>8} {'aborted':>8} {'longest exit path':>18}")
    for arm in ARMS:
        print(f"{arm:<22} {failed[arm]:>8} {aborted[arm]:>8} {exit_s[arm]:>16.3f} s")


if __name__ == "__main__":
    main()
