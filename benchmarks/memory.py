"""Where the CPU default's memory goes: RSS and the C heap at each phase of a real `gbpo.train` run, in one process.

    python benchmarks/memory.py                                         # recipes/smollm2_cpu.yaml, 9 optimizer steps
    python benchmarks/memory.py --max_steps 9 --per_device_train_batch_size 16 --gradient_accumulation_steps 1 \\
        --steps_per_generation 4                                        # the old layout: one micro-batch of 16

Every argument is passed to ``gbpo.train`` (default: the CPU default recipe, 9 optimizer steps, no checkpoint, output
in outputs/bench_memory). The run is wrapped, not changed: after the trainer is built, after each generation batch
(TRL's ``_generate_and_score_completions``), after each ``training_step`` (one micro-batch's forward and backward)
and after each optimizer step (a TrainerCallback) it prints one line (the first three of each, then every 8th):

- ``rss``: the process's resident memory now (``VmRSS``), GB;
- ``peak``: its largest resident memory so far (``VmHWM``): the figure the 4 GB target is about;
- ``heap in use`` / ``heap free``: glibc's ``mallinfo2``: bytes of live C allocations (torch's CPU tensors among
  them) and bytes freed but still held by the allocator (reused by the next step, not returned to the system);
- ``mmapped``: allocations glibc served with their own mapping (tensors of 32 MB and more, vLLM's KV cache).

The policy's weights, loaded from safetensors, sit in a file mapping and count in ``rss`` only. A table of the lines
ends the run. Linux with glibc only (``/proc/self/status``, ``mallinfo2``).
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARGS = [
    str(ROOT / "recipes" / "smollm2_cpu.yaml"), "--max_steps", "9", "--save_strategy", "no",
    "--output_dir", str(ROOT / "outputs" / "bench_memory"), "--overwrite_output_dir", "true",
]  # fmt: skip


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        + ("keepcost",)
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2
ROWS: list[tuple[str, float, float, float, float, float]] = []


def snapshot(phase: str) -> None:
    """Record and print one line: RSS, peak RSS, glibc heap in use / free, mmapped, all in GB."""
    with open("/proc/self/status") as status:
        kib = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmRSS", "VmHWM"))}
    heap = _libc.mallinfo2()
    row = (phase, kib["VmRSS"] / 1e6, kib["VmHWM"] / 1e6, heap.uordblks / 1e9, heap.fordblks / 1e9, heap.hblkhd / 1e9)
    ROWS.append(row)
    line = "[memory] {:34s} rss {:5.2f} GB  peak {:5.2f}  heap in use {:5.2f}  free {:5.2f}  mmapped {:5.2f}"
    print(line.format(*row), flush=True)


def reported(count: int) -> bool:
    """Whether the ``count``-th call (from 1) gets a line: the first three, then every 8th."""
    return count <= 3 or count % 8 == 0


def watch(cls, name: str) -> None:
    """Wrap ``cls.name`` so that it records a snapshot after its first three calls and every 8th."""
    original = getattr(cls, name)
    calls = [0]

    def wrapped(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls[0] += 1
        if reported(calls[0]):
            snapshot(f"after {name} #{calls[0]}")
        return out

    setattr(cls, name, wrapped)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("--"):
        argv = DEFAULT_ARGS + argv  # later keys win in gbpo.train's parser
    snapshot("start")
    import torch  # noqa: F401

    snapshot("torch imported")
    from gbpo.train import main as train
    from gbpo.trainer import GBPOTrainer

    snapshot("gbpo, TRL (and vLLM) imported")
    from transformers import TrainerCallback

    class AfterOptimizerStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if reported(state.global_step):
                snapshot(f"after optimizer step {state.global_step}")

    init = GBPOTrainer.__init__

    def init_and_watch(self, *args, **kwargs):
        init(self, *args, **kwargs)
        snapshot("trainer built (model, vLLM engine)")
        self.add_callback(AfterOptimizerStep())

    GBPOTrainer.__init__ = init_and_watch
    watch(GBPOTrainer, "_generate_and_score_completions")
    watch(GBPOTrainer, "training_step")
    train(argv)
    snapshot("end")
    print("\n| phase | RSS GB | peak RSS GB | heap in use GB | heap free GB | mmapped GB |\n|---|---|---|---|---|---|")
    for row in ROWS:
        print("| {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |".format(*row))


if __name__ == "__main__":
    main()
