"""Tests for gbpo.data and the bundled data files (fast: no model, no network)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from gbpo.data import BENCHMARKS, INSTRUCTION, benchmark_path, build_prompt, data_dir, load_benchmark

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "gbpo" / "benchmark_data"
EXPECTED_ROWS = {"aime24": 30, "amc": 83, "math500": 500, "arithmetic": 200}


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


ROWS = [
    {"id": "a", "problem": "What is 1 + 1?", "answer": "2", "level": 1},
    {"id": "b", "problem": "What is 2 + 2?", "answer": "4", "level": 3},
]


# ---------------------------------------------------------------- bundled files


def test_benchmarks_table_and_data_dir():
    assert set(BENCHMARKS) == set(EXPECTED_ROWS)
    assert data_dir() == DATA
    for name in BENCHMARKS:
        assert benchmark_path(name).is_file()


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_bundled_files_schema(name):
    rows = read_jsonl(DATA / BENCHMARKS[name])
    assert len(rows) == EXPECTED_ROWS[name]
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        assert {"id", "problem", "answer", "source"} <= set(row)
        assert isinstance(row["answer"], str) and row["answer"].strip()
        assert isinstance(row["problem"], str) and row["problem"].strip()
    if name == "math500":
        assert {row["level"] for row in rows} == {1, 2, 3, 4, 5}
        assert all(row["subject"] for row in rows)


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_load_benchmark_rows_and_prompt(name):
    ds = load_benchmark(name)
    raw = read_jsonl(DATA / BENCHMARKS[name])
    assert isinstance(ds, datasets.Dataset)
    assert len(ds) == EXPECTED_ROWS[name]
    assert {"prompt", "answer", "problem", "id", "source"} <= set(ds.column_names)
    for row, src in zip(ds, raw, strict=True):
        assert row["id"] == src["id"] and row["answer"] == src["answer"]
        assert row["prompt"] == [{"role": "user", "content": f"{src['problem']}\n{INSTRUCTION}"}]
    if name == "math500":
        assert ds.column_names.count("level") == 1 and "subject" in ds.column_names


def test_instruction_and_build_prompt():
    assert INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."
    assert build_prompt("P") == [{"role": "user", "content": "P\n" + INSTRUCTION}]
    assert build_prompt("P", system_prompt="You are helpful.") == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "P\n" + INSTRUCTION},
    ]


def test_system_prompt_and_limit():
    ds = load_benchmark("aime24", limit=5, system_prompt="Be brief.")
    raw = read_jsonl(DATA / "aime24.jsonl")[:5]
    assert ds["id"] == [row["id"] for row in raw]
    assert ds[0]["prompt"] == build_prompt(raw[0]["problem"], "Be brief.")
    assert len(load_benchmark("amc", limit=1000)) == 83


@pytest.mark.parametrize("levels", [[1], [5], [1, 2]])
def test_math500_level_filter(levels):
    raw = read_jsonl(DATA / "math500.jsonl")
    expected = [row["id"] for row in raw if row["level"] in levels]
    ds = load_benchmark("math500", levels=levels)
    assert ds["id"] == expected
    assert set(ds["level"]) == set(levels)
    if levels == [1]:
        assert len(ds) == sum(row["level"] == 1 for row in raw) == 43
    assert load_benchmark("math500", levels=levels, limit=7)["id"] == expected[:7]


def test_data_dir_env_override(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "aime24.jsonl", ROWS)
    monkeypatch.setenv("GBPO_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    assert load_benchmark("aime24")["id"] == ["a", "b"]
    with pytest.raises(ValueError, match="'amc'.*amc.jsonl"):
        load_benchmark("amc")


# ---------------------------------------------------------------- local files


def test_local_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    ds = load_benchmark(str(path), levels=[3])
    assert ds["id"] == ["b"]
    assert ds[0]["prompt"] == build_prompt("What is 2 + 2?")
    assert ds[0]["answer"] == "4"


def test_local_json_numeric_answers(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([{"problem": "p1", "answer": 3, "extra": "x"}, {"problem": "p2", "answer": 42}]))
    ds = load_benchmark(str(path))
    assert ds["answer"] == ["3", "42"]
    assert ds["extra"] == ["x", None]
    assert ds[1]["prompt"] == build_prompt("p2")


def test_local_parquet(tmp_path):
    path = tmp_path / "mine.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    ds = load_benchmark(str(path), limit=1, system_prompt="S")
    assert ds["id"] == ["a"] and ds["answer"] == ["2"] and ds["level"] == [1]
    assert ds[0]["prompt"] == build_prompt("What is 1 + 1?", "S")


# ---------------------------------------------------------------- errors


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as err:
        load_benchmark("aime25")
    message = str(err.value)
    assert "'aime25'" in message
    for name in BENCHMARKS:
        assert name in message


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("problem,answer\np,1\n")
    with pytest.raises(ValueError, match=r"'\.csv'"):
        load_benchmark(str(path))


@pytest.mark.parametrize("column", ["problem"])
def test_missing_column_names_column_file_and_columns(tmp_path, column):
    rows = [{k: v for k, v in row.items() if k != column} for row in ROWS]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError) as err:
        load_benchmark(str(path))
    message = str(err.value)
    assert f"'{column}'" in message and str(path) in message
    for present in rows[0]:
        assert f"'{present}'" in message


def test_levels_without_level_column():
    with pytest.raises(ValueError, match="'level'.*aime24.jsonl"):
        load_benchmark("aime24", levels=[1])


@pytest.mark.parametrize("levels", [[0], [6], [1, 6], [], ["1"]])
def test_levels_out_of_range(levels):
    with pytest.raises(ValueError, match=re.escape(repr(levels))):
        load_benchmark("math500", levels=levels)


@pytest.mark.parametrize("limit", [0, -1])
def test_bad_limit(limit):
    with pytest.raises(ValueError, match=f"limit.*{limit}"):
        load_benchmark("amc", limit=limit)


def test_empty_after_filter(tmp_path):
    path = write_jsonl(tmp_path / "hard.jsonl", [{"problem": "p", "answer": "1", "level": 5}])
    with pytest.raises(ValueError, match=r"No rows.*level in \[1, 2\].*present: \[5\]"):
        load_benchmark(str(path), levels=[1, 2])


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ValueError, match="no rows"):
        load_benchmark(str(path))


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([ROWS[0], {"id": "q7", "problem": "p", "answer": ""}], r"Row 1, id 'q7'.*'answer'"),
        ([{"problem": "  ", "answer": "1"}], r"Row 0 .*'problem'"),
        ([{"problem": "p", "answer": "1"}, {"problem": None, "answer": "2"}], r"Row 1 .*'problem'"),
    ],
)
def test_empty_problem_or_answer_names_row(tmp_path, rows, expected):
    path = write_jsonl(tmp_path / "holes.jsonl", rows)
    with pytest.raises(ValueError, match=expected):
        load_benchmark(str(path))


def test_unlabeled_file_needs_only_problem(tmp_path):
    """TTRL trains on problems without gold answers: no answer column in the file, none in the dataset."""
    path = write_jsonl(tmp_path / "unlabeled.jsonl", [{"problem": "What is 1 + 1?"}, {"problem": "What is 2 + 5?"}])
    ds = load_benchmark(str(path), instruction="")
    assert ds.column_names == ["problem", "prompt"]
    assert ds["prompt"] == [
        [{"role": "user", "content": "What is 1 + 1?"}],
        [{"role": "user", "content": "What is 2 + 5?"}],
    ]


def test_null_answer_is_an_unlabeled_row(tmp_path):
    path = write_jsonl(tmp_path / "partly.jsonl", [ROWS[0], {"id": "q8", "problem": "p", "answer": None}])
    assert load_benchmark(str(path))["answer"] == ["2", None]


def test_malformed_jsonl_names_line_and_column(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n" + '{"problem": "p", "answer" "3"}\n')
    with pytest.raises(ValueError) as err:
        load_benchmark(str(path))
    assert f"{path} is not valid JSON Lines at line 3, column 27: Expecting ':' delimiter." == str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained pyarrow traceback


# ---------------------------------------------------------------- arithmetic generator

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "\\times": lambda a, b: a * b}
PATTERN = re.compile(r"What is ([1-9]) (\+|-|\\times) ([1-9])\?")


def test_arithmetic_reproducible_and_correct(tmp_path):
    out = tmp_path / "arith.jsonl"
    subprocess.run(
        [sys.executable, str(DATA / "make_arithmetic.py"), "--seed", "0", "--n", "200", "--output", str(out)],
        check=True,
        capture_output=True,
    )
    assert out.read_bytes() == (DATA / "arithmetic.jsonl").read_bytes()

    rows = read_jsonl(out)
    assert [row["id"] for row in rows] == [f"arith-{i:04d}" for i in range(200)]
    assert {row["source"] for row in rows} == {"generated by data/make_arithmetic.py --seed 0"}
    used = set()
    for row in rows:
        match = PATTERN.fullmatch(row["problem"])
        assert match, row["problem"]
        a, op, b = int(match[1]), match[2], int(match[3])
        used.add(op)
        assert row["answer"] == str(OPS[op](a, b)), row
        assert int(row["answer"]) >= 0
    assert used == set(OPS)


# ---------------------------------------------------------------- the benchmarks inside a built wheel


def test_wheel_ships_the_benchmarks(tmp_path):
    """Build the wheel from a copy of the source, install it into a fresh virtual environment (offline, no
    dependencies: they come from this environment) and load a benchmark there, far from the source tree."""
    import shutil
    import sysconfig

    src = tmp_path / "src"
    shutil.copytree(REPO / "gbpo", src / "gbpo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("gbpo-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    # this environment's packages (datasets, ...) after the new venv's own, without the source tree's gbpo
    ours = [p for p in sys.path if p.startswith(sysconfig.get_paths()["purelib"])]
    (Path(site) / "parent_env.pth").write_text("\n".join(ours) + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", wheel],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    code = (
        "import gbpo.data as d; from gbpo.data import load_benchmark; ds = load_benchmark('aime24'); "
        "print(d.__file__); print(len(ds), ds[0]['answer'])"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("PYTHONPATH", "GBPO_DATA_DIR")}
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    module, rows = result.stdout.strip().splitlines()[-2:]
    assert module.startswith(site) and rows == f"30 {read_jsonl(DATA / 'aime24.jsonl')[0]['answer']}"
