"""Two processes (torchrun, gloo on CPU): a vote group split across ranks votes whole, GBPO's target ratios come
from the rewards gathered over both ranks, and vote-N/train-M keeps the same completions on every rank."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from gbpo.loss import gbpo_advantages, target_ratio
from gbpo.rewards import MajorityVoteReward

SCRIPT = Path(__file__).parent / "scripts" / "distributed_run.py"


def free_port() -> int:
    """A TCP port free now, for a launcher's rendezvous (a fixed one may still be held by an earlier test)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_ranks(launcher: list[str], out: Path, model_dir: Path) -> None:
    """Run tests/scripts/distributed_run.py on 2 CPU processes with ``launcher`` (torchrun or accelerate)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [*launcher, str(SCRIPT), str(out), str(model_dir)], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]


def check_two_rank_records(tmp_path: Path, zero_stage: int | None = None) -> None:
    """The votes, advantages and target ratios each rank recorded equal a single-process computation."""
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["num_processes"] == ranks[1]["num_processes"] == 2
    assert ranks[0]["zero_stage"] == ranks[1]["zero_stage"] == zero_stage

    calls = list(zip(ranks[0]["reward_calls"], ranks[1]["reward_calls"], strict=True))
    assert len(calls) >= 1
    nontrivial = 0
    for r0, r1 in calls:
        assert len(r0["completions"]) == len(r1["completions"]) == 6
        prompts = r0["prompts"] + r1["prompts"]
        completions = r0["completions"] + r1["completions"]
        # the second group of 4 (completions 4..7) spans both ranks
        assert prompts[4:6] == r0["prompts"][4:6] and prompts[6:8] == r1["prompts"][:2]
        assert len({json.dumps(p) for p in prompts[4:8]}) == 1
        single = MajorityVoteReward(num_generations=4, fallback_last_number=True)(
            prompts=prompts, completions=completions
        )
        assert r0["rewards"] + r1["rewards"] == single
        nontrivial += sum(single) > 0
    assert nontrivial > 0, "the random model never produced an answer: the test would not see a vote"

    # GBPO's advantages and target ratios: computed from the rewards gathered over both ranks; with vote-4/train-2
    # positions 1 and 3 of each group voted but leave the batch, on whichever rank they are: 3 rows stay on each.
    trained = torch.tensor([True, False, True, False] * 3)
    for (r0, r1), b0, b1 in zip(calls, ranks[0]["batches"], ranks[1]["batches"], strict=True):
        assert len(b0["advantages"]) == len(b1["advantages"]) == 3
        rewards = torch.tensor(r0["rewards"] + r1["rewards"])
        advantages, target_advantages = gbpo_advantages(rewards[trained], 2)
        torch.testing.assert_close(torch.tensor(b0["advantages"] + b1["advantages"]), advantages)
        torch.testing.assert_close(
            torch.tensor(b0["target_ratios"] + b1["target_ratios"]), target_ratio(target_advantages)
        )


def test_two_process_votes_equal_single_process_votes(tiny_model_dir, tmp_path):
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    run_two_ranks(torchrun, tmp_path, tiny_model_dir)
    check_two_rank_records(tmp_path)


def test_shutdown_distributed_destroys_the_group_held_elsewhere_and_leaves_gloo_idle(tmp_path):
    """`gbpo.train`'s exit path: the process group is gone even while something (as DeepSpeed does) still holds it,
    and it returns only once no gloo worker thread is runnable. Without a process group it does nothing."""
    import torch.distributed as dist

    from gbpo.distributed import _gloo_workers_busy, shutdown_distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        held = dist.group.WORLD  # a reference kept elsewhere keeps gloo's worker threads alive
        total = torch.ones(4)
        dist.all_reduce(total)
        names = [(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()]
        assert "pt_gloo_runloop" in names  # the threads the wait watches, by the name _gloo_workers_busy looks for
        shutdown_distributed()
        assert not dist.is_initialized()
        assert not _gloo_workers_busy()
        shutdown_distributed()  # nothing left to end: a no-op, not an error
        del held
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
