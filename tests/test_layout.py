"""The package layout a newcomer can read (issue 12.8): no module over ~500 lines, and the trainer imports only what it
uses (not the evaluation CLI, its report or matplotlib)."""

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gbpo"


def test_no_module_over_500_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert sizes and {name: n for name, n in sizes.items() if n > 500} == {}


def test_trainer_does_not_import_the_evaluation_cli_or_matplotlib():
    code = (
        "import sys, gbpo.trainer; "
        "print(sorted(m for m in ('matplotlib', 'gbpo.evaluation.cli', 'gbpo.evaluation.report') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
