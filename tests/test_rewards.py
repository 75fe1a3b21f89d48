"""TTRL majority-vote and accuracy rewards, single process (the 2-process run is in test_distributed.py)."""

import pytest

from gbpo.rewards import AccuracyReward, MajorityVoteReward, accuracy_reward, completion_text


def conv(text):
    return [{"role": "assistant", "content": text}]


PROMPT_A = [{"role": "user", "content": "What is 284 / 2?"}]
PROMPT_B = [{"role": "user", "content": "What is 1/2?"}]

# Group A: "142", "142.0" and "\frac{284}{2}" are one answer (3 votes) against "141" (1 vote).
# Group B: "0.5", "\frac12" (2 votes) against "1" (1) and no answer (1).
COMPLETIONS = [
    conv("so \\boxed{142}"),
    conv("\\boxed{141}"),
    conv("it is \\boxed{142.0}"),
    conv("\\boxed{\\frac{284}{2}}"),
    conv("\\boxed{0.5}"),
    conv("\\boxed{1}"),
    conv("no answer here"),
    conv("\\boxed{\\frac12}"),
]
PROMPTS = [PROMPT_A] * 4 + [PROMPT_B] * 4
EXPECTED = [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]


def test_majority_vote_uses_answer_equivalence():
    reward = MajorityVoteReward(num_generations=4)
    assert reward(prompts=PROMPTS, completions=COMPLETIONS) == EXPECTED


def test_gold_answer_never_reaches_the_reward_and_metrics_are_logged():
    reward = MajorityVoteReward(num_generations=4)
    logged = {}
    right = reward(
        prompts=PROMPTS, completions=COMPLETIONS, answer=["142"] * 4 + ["1/2"] * 4, log_metric=logged.__setitem__
    )
    wrong = reward(prompts=PROMPTS, completions=COMPLETIONS, answer=["141"] * 4 + ["1"] * 4)
    assert right == wrong == EXPECTED
    assert logged["ttrl/majority_ratio"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert logged["ttrl/label_accuracy"] == pytest.approx(1.0)
    assert logged["ttrl/reward_accuracy"] == pytest.approx(1.0)
    assert logged["ttrl/gold_reward"] == pytest.approx(5 / 8)

    # gold "141" for A: label wrong for A; pseudo-rewards disagree with the gold rewards on all 4 of A's completions.
    logged.clear()
    reward(prompts=PROMPTS, completions=COMPLETIONS, answer=["141"] * 4 + ["1/2"] * 4, log_metric=logged.__setitem__)
    assert logged["ttrl/label_accuracy"] == pytest.approx(0.5)
    assert logged["ttrl/reward_accuracy"] == pytest.approx(4 / 8)


def test_standard_string_completions_and_last_number_fallback():
    reward = MajorityVoteReward(num_generations=4, fallback_last_number=True)
    texts = ["The answer is 12.", "so 7 + 5 = 12", "I think 13", "\\boxed{12}"]
    assert reward(prompts=["What is 7 + 5?"] * 4, completions=texts) == [1.0, 1.0, 0.0, 1.0]
    # without the fallback only the boxed answer votes: it wins alone
    assert MajorityVoteReward(4)(prompts=["q"] * 4, completions=texts) == [0.0, 0.0, 0.0, 1.0]


def test_group_with_no_answers_gets_zero_reward():
    reward = MajorityVoteReward(num_generations=2)
    assert reward(prompts=["q", "q"], completions=["nothing", "still nothing"]) == [0.0, 0.0]


def test_bad_group_layout_is_a_clear_error():
    reward = MajorityVoteReward(num_generations=3)
    with pytest.raises(ValueError, match="not a multiple of num_generations=3"):
        reward(prompts=PROMPTS, completions=COMPLETIONS)
    with pytest.raises(ValueError, match="do not share one prompt"):
        MajorityVoteReward(num_generations=8)(prompts=PROMPTS, completions=COMPLETIONS)
    with pytest.raises(ValueError, match="num_generations"):
        MajorityVoteReward(num_generations=0)


def test_accuracy_reward():
    rewards = accuracy_reward(completions=COMPLETIONS, answer=["142"] * 4 + ["0.5"] * 4)
    assert rewards == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert AccuracyReward(fallback_last_number=True)(completions=["it is 7", "8"], answer=["7", 7]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="'answer' column"):
        accuracy_reward(completions=COMPLETIONS)


def test_completion_text():
    assert completion_text("plain") == "plain"
    assert completion_text(conv("chat")) == "chat"
    with pytest.raises(TypeError, match="int"):
        completion_text(3)


def test_one_grading_deadline_bounds_the_whole_reward_call(monkeypatch):
    """Symbolic work that would run to each group's deadline: with one deadline for the whole reward call, 6 groups of
    symbolic-only answers take about one deadline (0.5 s), not six; past the deadline the keys decide."""
    import time

    import gbpo.grading as grading
    import gbpo.grading.voting as voting

    deadlines = []

    def slow_symbolic_pairs(pairs, deadline):
        deadlines.append(deadline)
        time.sleep(max(0.0, deadline - time.monotonic()))  # busy until the deadline, then the keys decide
        return [False] * len(pairs)

    monkeypatch.setattr(voting, "_symbolic_pairs", slow_symbolic_pairs)
    previous = grading.configure_grading(batch_deadline_s=0.5)["batch_deadline_s"]
    try:
        groups = 6
        prompts = [[{"role": "user", "content": f"Simplify expression {i}"}] for i in range(groups) for _ in range(2)]
        completions = [conv(f"\\boxed{{x^{i} + y}}") if j == 0 else conv(f"\\boxed{{y + x^{i}}}")
                       for i in range(groups) for j in range(2)]  # fmt: skip
        start = time.monotonic()
        rewards = MajorityVoteReward(num_generations=2)(prompts=prompts, completions=completions)
        elapsed = time.monotonic() - start
    finally:
        grading.configure_grading(batch_deadline_s=previous)
    assert len(deadlines) == groups and len(set(deadlines)) == 1  # every group got the call's one deadline
    assert elapsed < 0.5 * 3, elapsed  # per-group deadlines would take 6 x 0.5 s
    assert rewards == [1.0, 0.0] * groups  # unresolved pairs stay apart: the first answer of each group wins


def test_majority_vote_of_none_is_a_clear_type_error():
    from gbpo.grading import majority_vote

    with pytest.raises(TypeError, match="answers must be an iterable of answers"):
        majority_vote(None)
    with pytest.raises(TypeError, match="got str"):
        majority_vote("42")
