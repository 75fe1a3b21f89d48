"""Benchmark data: the bundled math benchmarks and local files as conversational prompt datasets.

``load_benchmark("math500", levels=[1, 2])`` returns a :class:`datasets.Dataset` with a ``prompt`` column
(a list of chat messages built by :func:`build_prompt`) and the gold ``answer`` as a string, plus the
file's other columns (``id``, ``problem``, ``level``, ...). The gold answer is optional: test-time RL (the
``majority_vote`` reward) needs only ``problem``, so a file without an ``answer`` column loads without one, and a
row whose ``answer`` is ``null`` keeps ``None``. Training and evaluation both build prompts
with :func:`build_prompt`, so they share one template.

The bundled files are package data, ``gbpo/benchmark_data/`` (see its ``README.md``; the repository's top-level
``data/`` links to it), found with :mod:`importlib.resources`, so an installed wheel has them too. Set the
``GBPO_DATA_DIR`` environment variable to read them from elsewhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import datasets

__all__ = ["BENCHMARKS", "INSTRUCTION", "benchmark_path", "build_prompt", "data_dir", "load_benchmark"]

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
"""Appended (on its own line) to every problem."""

BENCHMARKS: dict[str, str] = {
    "aime24": "aime24.jsonl",
    "amc": "amc.jsonl",
    "math500": "math500.jsonl",
    "arithmetic": "arithmetic.jsonl",
}
"""Bundled benchmark names and their file names inside :func:`data_dir`."""

DATA_DIR_ENV = "GBPO_DATA_DIR"
_LOADERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_MATH_LEVELS = range(1, 6)


def data_dir() -> Path:
    """Directory holding the bundled benchmark files.

    ``$GBPO_DATA_DIR`` when set, else the package data directory ``benchmark_data`` of the installed ``gbpo``
    (located with :func:`importlib.resources.files`). Read on every call, so the environment variable can be
    changed at run time.

    Raises:
        ValueError: ``gbpo`` is installed in a form whose package data is not a directory (e.g. a zip file).
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    folder = resources.files("gbpo") / "benchmark_data"
    if not isinstance(folder, Path):
        raise ValueError(f"gbpo's benchmark data is not a directory ({folder}): set ${DATA_DIR_ENV} to one.")
    return folder


def benchmark_path(name: str) -> Path:
    """Path of the bundled benchmark ``name`` (one of :data:`BENCHMARKS`).

    Raises:
        ValueError: ``name`` is not a bundled benchmark, or its file is missing from :func:`data_dir`.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; known benchmarks: {', '.join(sorted(BENCHMARKS))}.")
    path = data_dir() / BENCHMARKS[name]
    if not path.is_file():
        raise ValueError(
            f"Benchmark {name!r} should be at {path}, but there is no such file "
            f"(data directory from ${DATA_DIR_ENV} or the package's benchmark_data/)."
        )
    return path


def build_prompt(
    problem: str, system_prompt: str | None = None, instruction: str = INSTRUCTION
) -> list[dict[str, str]]:
    """Conversational prompt for one problem: ``problem`` followed by ``instruction`` on a new line.

    Returns ``[{"role": "user", "content": f"{problem}\\n{instruction}"}]``, preceded by
    ``{"role": "system", "content": system_prompt}`` when ``system_prompt`` is given. ``instruction`` defaults to
    the standard :data:`INSTRUCTION`; an empty one leaves the problem alone.
    """
    messages = [{"role": "user", "content": f"{problem}\n{instruction}" if instruction else problem}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _resolve(name: str) -> Path:
    if name in BENCHMARKS:
        return benchmark_path(name)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() not in _LOADERS:
            raise ValueError(
                f"Unsupported file type {path.suffix!r} for {path}; expected one of {', '.join(_LOADERS)}."
            )
        return path
    raise ValueError(
        f"Unknown benchmark {name!r}: it is neither a known benchmark ({', '.join(sorted(BENCHMARKS))}) "
        "nor an existing .json/.jsonl/.parquet file."
    )


def _jsonl_error(path: Path) -> str | None:
    """Where a JSON Lines file stops being valid: ``"line L, column C: <reason>"`` (1-based), or None."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                return f"line {number}, column {e.colno}: {e.msg}"
            if not isinstance(row, dict):
                return f"line {number}: a JSON {type(row).__name__}, not an object with a 'problem' key"
    return None


def _check_text(value, column: str, index: int, row: dict, path: Path) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        row_id = f", id {row['id']!r}" if row.get("id") is not None else ""
        raise ValueError(f"Row {index}{row_id} of {path} has an empty {column!r} ({value!r}).")
    return value if isinstance(value, str) else str(value)


def load_benchmark(
    name: str,
    *,
    levels: Sequence[int] | None = None,
    limit: int | None = None,
    system_prompt: str | None = None,
    instruction: str = INSTRUCTION,
) -> datasets.Dataset:
    """Load a benchmark as a conversational prompt dataset.

    Args:
        name: a bundled benchmark (``"aime24"``, ``"amc"``, ``"math500"``, ``"arithmetic"``) or the path to
            a local ``.json``/``.jsonl``/``.parquet`` file with a ``problem`` column and, optionally, an ``answer``
            column (read with :func:`datasets.load_dataset`, split ``"train"``).
        levels: keep only rows whose ``level`` is in ``levels`` (MATH levels, each in 1..5). The file must
            have a ``level`` column.
        limit: keep the first ``limit`` rows (after the level filter).
        system_prompt: optional system message put before the user message.
        instruction: the line after each problem (default: the standard :data:`INSTRUCTION`).

    Returns:
        A :class:`datasets.Dataset` with ``prompt`` (from :func:`build_prompt`), ``answer`` (the gold answer
        as a string; numbers are converted with ``str``) and the file's other columns, ``problem``
        included, in file order. A ``prompt`` column already in the file is replaced. Unlabeled data: without
        an ``answer`` column in the file there is none in the dataset; a ``null`` answer stays ``None``.

    Raises:
        ValueError: unknown name, unsupported file type, missing ``problem``/``level`` column, a level outside
            1..5, ``limit`` below 1, an empty or unreadable file (for JSON Lines: the line and column where it
            stops being valid JSON), an empty ``problem`` or an empty-string ``answer`` in any row of the file, or
            no rows left after filtering.
    """
    path = _resolve(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}.")
    if levels is not None:
        levels = list(levels)
        bad = [lv for lv in levels if isinstance(lv, bool) or not isinstance(lv, int) or lv not in _MATH_LEVELS]
        if bad or not levels:
            raise ValueError(f"levels must be a non-empty list of integers in 1..5, got {levels!r}.")

    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: it has no rows.")
    loader = _LOADERS[path.suffix.lower()]
    try:
        ds = datasets.load_dataset(loader, data_files=str(path), split="train")
    except Exception as e:  # datasets/pyarrow raise many types (and StopIteration) for unreadable files
        where = _jsonl_error(path) if path.suffix.lower() == ".jsonl" else None
        if where is not None:  # the row is what the user needs, not pyarrow's chained traceback
            raise ValueError(f"{path} is not valid JSON Lines at {where}.") from None
        raise ValueError(f"Could not read {path} with datasets' {loader!r} loader: {type(e).__name__}: {e}") from e
    required = ["problem"] + (["level"] if levels is not None else [])
    for column in required:
        if column not in ds.column_names:
            why = " (needed by the levels filter)" if column == "level" else ""
            raise ValueError(f"Column {column!r}{why} missing from {path}; it has columns {ds.column_names}.")

    rows = ds.to_list()
    if not rows:
        raise ValueError(f"{path} has no rows.")
    for index, row in enumerate(rows):
        row["problem"] = _check_text(row["problem"], "problem", index, row, path)
        if row.get("answer") is not None:  # unlabeled rows (no column, or null) keep no gold answer
            row["answer"] = _check_text(row["answer"], "answer", index, row, path)

    if levels is not None:
        present = sorted({row["level"] for row in rows}, key=str)
        rows = [row for row in rows if row["level"] in levels]
        if not rows:
            raise ValueError(f"No rows of {path} have level in {levels}; levels present: {present}.")
    if limit is not None:
        rows = rows[:limit]

    for row in rows:
        row["prompt"] = build_prompt(row["problem"], system_prompt, instruction)
    return datasets.Dataset.from_list(rows)
