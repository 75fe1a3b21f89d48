"""Equivalence decisions of grading round 2 (issue 13), each in both argument orders: equations against ``y = ...``,
fractions against float printouts, unevaluated matrix sums and products, intervals against inequalities, units in
``\\text{}``, numbers in words, ``3{.}5``, degrees inside trigonometric functions, ``x**2``, and text case."""

import pytest

from gbpo.grading import answers_equivalent, grading_stats, majority_vote

PAIRS = [
    # a line written two ways: equation vs "y = ..." (the y = is kept when the other side is an equation)
    ("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{3}{4}", True),
    ("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{1}{4}", False),
    ("y = 2x + 3", "2x - y + 3 = 0", True),
    ("y = 3", "3", True),
    # a fraction against a program's 16-digit float; a rounded answer is still not the fraction
    ("\\frac{1}{12}", "0.0833333333333333", True),
    ("\\frac{1}{3}", "0.3333333333333333", True),
    ("1/3", "0.3333333333333333", True),
    ("\\frac{\\sqrt3}{2}", "0.8660254037844386", True),
    ("\\frac{1}{3}", "0.333333", False),
    ("\\frac{1}{3}", "0.3333333333343333", False),
    ("10", "10.000000001", False),
    # an unevaluated matrix sum or product against its value
    (
        "\\begin{pmatrix}6 & 8 \\\\ 10 & 12\\end{pmatrix}",
        "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}",
        True,
    ),
    (
        "\\begin{pmatrix}6 & 8 \\\\ 10 & 13\\end{pmatrix}",
        "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}",
        False,
    ),
    (
        "\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}",
        "\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix} \\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}",
        True,
    ),
    # an interval and the inequality that describes it
    ("[-2, 7]", "-2 \\le x \\le 7", True),
    ("x \\in [-2,7]", "-2 \\le x \\le 7", True),
    ("(0, 1)", "0 < x < 1", True),
    ("[5, \\infty)", "x \\geq 5", True),
    ("(5, \\infty)", "x \\geq 5", False),
    ("[-2, 7]", "-2 < x \\le 7", False),
    # a number and the same number with a unit
    ("5", "5\\text{ cm}", True),
    ("5", "5 \\text{cm}^2", True),
    ("12", "12\\,\\text{m/s}", True),
    ("125", "125\\textnormal{ miles}", True),
    ("12", "13\\text{ cm}", False),
    # digits and the number in words
    ("3", "three", True),
    ("3", "\\text{three}", True),
    ("21", "twenty-one", True),
    ("105", "one hundred and five", True),
    ("4", "three", False),
    # 3{.}5, degrees inside a trigonometric function, x**2
    ("3.5", "3{.}5", True),
    ("3.5", "3{.}6", False),
    ("0.5", "\\sin 30^\\circ", True),
    ("\\frac{1}{2}", "\\sin 30^{\\circ}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\cos 30^\\circ", True),
    ("0.5", "\\sin 31^\\circ", False),
    ("30", "30^\\circ", True),  # outside a trigonometric function degrees are a unit
    ("x^2", "x**2", True),
    ("x^2+1", "x**2 + 1", True),
    ("x^3", "x**2", False),
    # text answers that differ only in case; single letters keep their case (E is a choice, e a constant)
    ("\\text{Evelyn}", "evelyn", True),
    ("\\text{Even}", "even", True),
    ("\\text{even}", "\\text{odd}", False),
    ("E", "e", False),
    ("\\text{E}", "E", True),
]


@pytest.mark.parametrize("gold, pred, want", PAIRS, ids=[f"{g}|{p}" for g, p, _ in PAIRS])
def test_decision_in_both_orders(gold, pred, want):
    assert answers_equivalent(gold, pred) is want
    assert answers_equivalent(pred, gold) is want


def test_matrix_expressions_are_decided_not_failed():
    """sympy.N on an unevaluated matrix sum recursed without end in the worker; now the comparison decides."""
    before = grading_stats()
    total = "\\begin{pmatrix}2 & 0 \\\\ 0 & 2\\end{pmatrix} + \\begin{pmatrix}1 & 1 \\\\ 1 & 1\\end{pmatrix}"
    assert answers_equivalent("\\begin{pmatrix}3 & 1 \\\\ 1 & 3\\end{pmatrix}", total)
    after = grading_stats()
    assert after["failures"] == before["failures"] and after["timeouts"] == before["timeouts"]


def test_vote_merges_a_float_printout_with_its_fraction():
    vote = majority_vote(["\\frac{1}{12}", "0.0833333333333333", "0.083", "0.083", None])
    assert vote.winners == [True, True, False, False, False] and vote.label == "\\frac{1}{12}"
