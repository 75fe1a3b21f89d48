"""Agreement of `gbpo.grading` and of math-verify with the labels of Math-Verify's own test cases.

    python tests/math_verify_agreement.py [-v]

The cases are tests/data/math_verify_cases.jsonl (provenance and licence in tests/data/README.md). Ours: both texts
go through ``extract_answer(text, lenient=True)`` and then ``answers_equivalent(gold, pred)``, default settings.
Math-verify: ``verify(parse(gold), parse(pred))`` with the extraction targets and ``verify`` settings of the test the
case comes from (what Math-Verify's own suite runs). Printed: the counts on the single-answer pairs at default
settings (the headline; rows marked ``label_wrong`` counted against the corrected label), the same without those rows,
and the counts over every case; ``-v`` lists every case, otherwise only the argued labels with their reasons.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CASES = Path(__file__).with_name("data") / "math_verify_cases.jsonl"


def load_cases() -> list[dict]:
    return [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]


def label(case: dict) -> bool:
    """The label a competition-answer grader should give: the published one unless the row argues it is wrong."""
    return case["expected"] != bool(case.get("label_wrong"))


DEFAULTS = {"precision": 6, "strict": True, "allow_set_relation_comp": False}  # math-verify's verify defaults


def is_headline(case: dict) -> bool:
    """A single-answer pair (neither side lists several answers) whose test runs math-verify's default settings."""
    defaults = all(DEFAULTS[k] == v for k, v in case["settings"].items())
    return case.get("kind", "single") == "single" and defaults


def ours(case: dict) -> bool:
    from gbpo.grading import answers_equivalent, extract_answer

    gold = extract_answer(case["gold"], lenient=True)
    pred = extract_answer(case["pred"], lenient=True)
    return gold is not None and answers_equivalent(gold, pred)


def math_verify(case: dict) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    if case["match_types"] is None:
        return bool(verify(parse(case["gold"]), parse(case["pred"])))
    targets = [
        LatexExtractionConfig(boxed_match_priority=0) if t == "latex" else ExprExtractionConfig()
        for t in case["match_types"]
    ]
    settings = case["settings"]
    return bool(
        verify(
            parse(case["gold"], targets),
            parse(case["pred"], targets),
            float_rounding=settings.get("precision", 6),
            strict=settings.get("strict", True),
            allow_set_relation_comp=settings.get("allow_set_relation_comp", False),
        )
    )


def agreement(cases: list[dict]) -> dict:
    """Per case our verdict and math-verify's; returns the counts and the verdicts."""
    verdicts = [(case, ours(case), math_verify(case)) for case in cases]
    head = [v for v in verdicts if is_headline(v[0])]
    return {
        "verdicts": verdicts,
        "headline": (len(head), sum(o == label(c) for c, o, _ in head), sum(m == label(c) for c, _, m in head)),
        "undisputed": (
            sum(not c.get("label_wrong") for c, _, _ in head),
            sum(o == c["expected"] for c, o, _ in head if not c.get("label_wrong")),
            sum(m == c["expected"] for c, _, m in head if not c.get("label_wrong")),
        ),
        "all": (len(verdicts), sum(o == label(c) for c, o, _ in verdicts), sum(m == label(c) for c, _, m in verdicts)),
    }


def main(verbose: bool = False) -> None:
    result = agreement(load_cases())
    n, o, m = result["headline"]
    print(f"single-answer pairs at default settings: {n}; agree with the label: gbpo.grading {o}, math-verify {m}")
    n, o, m = result["undisputed"]
    print(f"  of which {n} with an undisputed label: gbpo.grading {o}, math-verify {m}")
    n, o, m = result["all"]
    print(f"all cases: {n}; agree with the label: gbpo.grading {o}, math-verify {m}")
    wrong = [c for c, _, _ in result["verdicts"] if c.get("label_wrong")]
    print(f"labels argued wrong for competition answers: {len(wrong)} (counted with the corrected label)")
    for case, o, m in result["verdicts"]:
        if verbose or case.get("label_wrong"):
            flag = "" if o == label(case) else "  <-- ours disagrees"
            print(
                f"- {case['source'].split('::')[1]} [{case.get('kind', 'single')}] label={label(case)} ours={o} "
                f"math-verify={m}{flag}\n    gold={case['gold'][-80:]!r}\n    pred={case['pred'][-80:]!r}"
                + (f"\n    note: {case['note']}" if case.get("note") else "")
            )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(verbose="-v" in sys.argv)
