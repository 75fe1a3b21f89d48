"""Regenerate math_verify_cases.jsonl from a checkout of huggingface/Math-Verify (its tests/ folder).

    python tests/data/make_math_verify_cases.py PATH_TO_MATH_VERIFY_GIT_DIR [COMMIT]

Each parametrized (gold, pred, expected) case of Math-Verify's tests becomes one row, attributed to its test file and
function, with the settings that test passes to ``verify`` (``precision`` = ``float_rounding``, ``strict``,
``allow_set_relation_comp``) and the extraction targets it parses with (``match_types``). Rows keep any ``note`` and
``label_wrong`` marks already in the output file (matched on source, gold and pred), so hand annotations survive a
regeneration. Tests that check something other than a pair's verdict (timeouts, parser configs, string extraction,
raised errors, sympy_expr_eq on sympy objects) are not equivalence cases and are left out.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).with_name("math_verify_cases.jsonl")
# test function -> (match_types, fixed verify settings); parametrized settings come from the case itself
HARNESS = {
    "test_number_extraction": (["expr"], {}),
    "test_simple_fraction_notation": (["latex", "expr"], {}),
    "test_sets_handling": (["latex", "expr"], {}),
    "test_latex_notation": (["latex"], {}),
    "test_percent_notation": (["latex", "expr"], {}),
    "test_latex_notation_math": (["latex"], {}),
    "test_relations_math": (["latex"], {}),
    "test_matrix_extraction": (["latex"], {}),
    "test_complex_math_expressions": (["latex", "expr"], {}),
    "test_math_extraction_edge_cases": (["latex", "expr"], {}),
    "test_math_extraction_additional_cases": (["latex", "expr"], {}),
    "test_set_rel_assymetry": (["latex"], {}),
    "test_float_precision": (["latex", "expr"], {"precision": 5}),
    "test_sqrt_precision": (["latex", "expr"], {"precision": 5}),
    "test_symbols": (["latex", "expr"], {"precision": 5}),
    "test_boxed": (["latex", "expr"], {}),
    "test_numina_cases": (["latex", "expr"], {}),
    "test_open_thoughts": (["latex", "expr"], {}),
    "test_strict_variable_comparison": (["latex", "expr"], {}),
    "test_string_extraction@test_yujianll": (None, {}),  # verify(parse(gold), parse(pred)): math-verify's defaults
}
FILES = ["test_all", "test_boxed", "test_numina_cases", "test_open_thoughts", "test_strict", "test_yujianll"]


def main(git_dir: str, commit: str = "HEAD") -> None:
    commit = subprocess.run(
        ["git", "--git-dir", git_dir, "rev-parse", commit], capture_output=True, text=True, check=True
    ).stdout.strip()
    old = {}
    if OUT.exists():
        for line in OUT.read_text().splitlines():
            row = json.loads(line)
            old[(row["source"], row["gold"], row["pred"])] = row
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tests").mkdir()
        (Path(tmp) / "tests" / "__init__.py").write_text("")
        for name in FILES:
            text = subprocess.run(
                ["git", "--git-dir", git_dir, "show", f"{commit}:tests/{name}.py"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            (Path(tmp) / "tests" / f"{name}.py").write_text(text)
        sys.path.insert(0, tmp)
        for name in FILES:
            module = importlib.import_module(f"tests.{name}")
            for attr, fn in vars(module).items():
                marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
                if not attr.startswith("test_") or not marks:
                    continue
                key = attr if attr in HARNESS else f"{attr}@{name}"
                if key not in HARNESS:
                    raise SystemExit(f"{name}.py::{attr}: no harness entry; read the test and add one")
                match_types, fixed = HARNESS[key]
                argnames = [a.strip() for a in marks[0].args[0].split(",")]
                for values in marks[0].args[1]:
                    case = dict(zip(argnames, values, strict=True))
                    settings = dict(fixed)
                    for k in ("precision", "strict", "allow_set_relation_comp"):
                        if k in case:
                            settings[k] = case[k]
                    expected = case.get("expected", case.get("result"))
                    source = f"tests/{name}.py::{attr}"
                    row = {
                        "source": source,
                        "gold": case["gold"],
                        "pred": case["pred"],
                        "expected": bool(expected),
                        "match_types": match_types,
                        "settings": settings,
                    }
                    previous = old.get((source, row["gold"], row["pred"]), {})
                    for k in ("kind", "label_wrong", "note"):
                        if k in previous:
                            row[k] = previous[k]
                    rows.append(row)
    with OUT.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} cases from Math-Verify {commit} -> {OUT}")


if __name__ == "__main__":
    main(*sys.argv[1:])
