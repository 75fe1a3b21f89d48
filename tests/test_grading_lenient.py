"""Lenient answer extraction (``extract_answer(text, lenient=True)``): answers outside ``\\boxed{}`` and answer sets
of several closing boxes; strict mode is unchanged."""

import pytest

from gbpo.grading import answers_equivalent, extract_answer


@pytest.mark.parametrize(
    "completion, expected",
    [
        # after "final answer is" / "answer:" (the last such phrase)
        ("So it costs that much. The final answer is $10{,}455$.", "10{,}455"),
        ("Final Answer: The final answer is 12,000,023. I hope it is correct. <|im_start|>user", "12,000,023"),
        ("Final Answer: The volume of $ABCDEFGH$ is 120. I hope it is correct.", "120"),
        ("Final Answer: Jane started growing Sphere 3 hours ago. I hope it is correct.", "3"),
        ("The answer is: \\(\\frac{3}{4}\\)", "\\frac{3}{4}"),
        ("answer: 42 apples", "42"),
        ("Answer: Evelyn.", "Evelyn"),
        # the last display or inline math
        ("Therefore $x \\geq 5$ is the solution.", "x \\geq 5"),
        ("Solving, we get\n\\[\n x = \\frac{1}{2}\n\\]\nand we are done.", "x = \\frac{1}{2}"),
        ("$$ 7 \\pi $$", "7 \\pi"),
        ("first $a=2$, then $b = 3$ is what remains", "b = 3"),
        ("It is \\( (9+1) \\)", "(9+1)"),
        # a concluding sentence after the last math
        ("With $d = \\frac{90}{n}$ for each divisor. Therefore, there are 12 such sequences.", "12"),
        # the last number
        ("so the number is 10 which is 1,000.99m\u00b2", "1,000.99"),
        ("the probability that Alice wins is 2/3", "2/3"),
        ("1 000", "1 000"),
        # a bare answer is the whole text
        ("\\frac{10}{9}", "\\frac{10}{9}"),
        ("-\\frac{10}{9}", "-\\frac{10}{9}"),
        # nothing
        ("AZYUK2A", None),  # a digit glued to letters is not a number
        ("no answer here", None),
        ("I could not find it, sorry about that, maybe try again later with a different problem", None),
        ("", None),
    ],
)
def test_lenient_reads_unboxed_answers(completion, expected):
    assert extract_answer(completion, lenient=True) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("so \\boxed{42}.", "42"),  # one box: as in strict mode
        ("\\boxed{1} then more words, finally \\boxed{3}", "3"),  # boxes apart: the last answers
        ("The solutions are \\boxed{1} and \\boxed{-2}.", "1, -2"),
        ("$x = \\boxed{1}$, $\\boxed{-2}$", "1, -2"),
        ("solutions:\n\\[\n\\boxed{(1, 2)}, \\boxed{(2, 1)}\n\\]", "(1, 2), (2, 1)"),
        ("\\boxed{2} \\quad \\text{and} \\quad \\boxed{3}", "2, 3"),
        ("\\boxed{5} or \\boxed{5}", "5"),  # repeats dropped
        ("\\boxed{(3, 3)} for part (a) and \\boxed{(1, 1)}", "(1, 1)"),  # words between: not a set
        ("\\boxed{1} and \\boxed{2} is wrong, the answer is \\boxed{3}", "3"),
        # a "final answer is" after the last box states the answer
        ("so $\\boxed{255}$ in the second CD. Final Answer: The final answer is $10,455$. I hope so.", "10,455"),
        # an unclosed last box (truncated): lenient reads on
        ("The answer is $7$. Check: \\boxed{7", "7"),
    ],
)
def test_lenient_boxes_and_answer_sets(completion, expected):
    assert extract_answer(completion, lenient=True) == expected


def test_answer_sets_grade_against_a_list_in_any_order():
    assert answers_equivalent("1,-2", extract_answer("roots \\boxed{1} and \\boxed{-2}", lenient=True))
    assert answers_equivalent("-2,1", extract_answer("roots \\boxed{1} and \\boxed{-2}", lenient=True))
    pairs = extract_answer("\\boxed{(1, 2)}, \\boxed{(2, 1)}", lenient=True)
    assert answers_equivalent("(2,1),(1,2)", pairs)
    assert not answers_equivalent("(2,1),(1,3)", pairs)


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("The final answer is $10{,}455$", "10455"),
        ("Therefore $x \\geq 5$ is the solution.", "[5, \\infty)"),
        ("Thus the answer is\n\\[ \\frac{\\pi}{4} \\]", "\\frac{\\pi}{4}"),
        ("The final answer is 3 hours.", "3"),
        ("It weighs 5 kg in total", "5"),
    ],
)
def test_lenient_answers_grade_right(completion, gold):
    assert answers_equivalent(gold, extract_answer(completion, lenient=True))


@pytest.mark.parametrize(
    "completion",
    ["The final answer is $10{,}455$", "Therefore $x \\geq 5$ is the solution.", "We get \\[ 7 \\]", "it is 12"],
)
def test_strict_mode_is_unchanged(completion):
    assert extract_answer(completion) is None
    assert extract_answer("\\boxed{1} and \\boxed{-2}") == "-2"


def test_lenient_is_keyword_only_and_checks_its_input():
    with pytest.raises(TypeError):
        extract_answer("\\boxed{1}", False, True)
    with pytest.raises(TypeError, match="completion"):
        extract_answer(None, lenient=True)


@pytest.mark.parametrize(
    "text",
    [
        "\\[" * 20000,  # unclosed display math, 20000 times: no quadratic rescans
        "\\(" * 20000 + "x",
        "$$ x" + "a" * 100000,
        "answer is $x$. " * 10000,  # many anchors and spans
        "Therefore $x$ is 1. " * 10000,
        "Final answer: " + "x is " * 20000,
    ],
    ids=["brackets", "parens", "dollars", "anchors", "conclusions", "is-chain"],
)
def test_lenient_extraction_stays_linear_on_long_adversarial_text(text):
    import time

    start = time.monotonic()
    extract_answer(text, lenient=True)
    assert time.monotonic() - start < 2.0  # a hang guard (quadratic scans took ~9 s here), not a speed target
