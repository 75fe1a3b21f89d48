"""Math-Verify's own equivalence cases (tests/data/math_verify_cases.jsonl) graded by gbpo.grading, math-verify beside.

``python tests/math_verify_agreement.py`` prints the counts the README states; this test holds them: on the
single-answer pairs at math-verify's default settings we agree with every label (the published one, or the corrected
one where the row argues it is wrong), and so at least as often as math-verify does.
"""

import pytest
from math_verify_agreement import agreement, is_headline, label, load_cases

CASES = load_cases()


def test_cases_are_attributed_and_argued():
    assert len(CASES) >= 250
    for case in CASES:
        assert case["source"].startswith("tests/test_") and "::test_" in case["source"], case
        assert isinstance(case["expected"], bool) and case["kind"] in ("single", "multi"), case
        if case.get("label_wrong"):
            assert len(case.get("note", "")) > 40, f"a label marked wrong needs its reason: {case}"
    assert sum(is_headline(c) for c in CASES) >= 200


@pytest.fixture(scope="module")
def result():
    pytest.importorskip("math_verify")
    return agreement(CASES)


def test_single_answer_pairs_agree_at_least_as_often_as_math_verify(result):
    n, ours, theirs = result["headline"]
    wrong = [
        (c["source"], c["gold"][-60:], c["pred"][-60:], label(c))
        for c, o, _ in result["verdicts"]
        if is_headline(c) and o != label(c)
    ]
    assert wrong == [], f"{len(wrong)} of {n} single-answer pairs disagree with their label"
    assert ours >= theirs


def test_argued_labels_are_the_only_ones_math_verify_gets_wrong_there(result):
    """Where math-verify disagrees with a corrected label, the row says why; every other headline label it meets."""
    for case, _, theirs in result["verdicts"]:
        if is_headline(case) and theirs != label(case):
            assert case.get("label_wrong"), case
