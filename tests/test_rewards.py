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


def slow_symbolic(deadlines):
    """A stand-in for the symbolic pool that is busy until the deadline it is given, then leaves pairs undecided."""
    import time

    def slow_symbolic_pairs(pairs, deadline):
        deadlines.append(deadline)
        time.sleep(max(0.0, deadline - time.monotonic()))
        return [False] * len(pairs)

    return slow_symbolic_pairs


@pytest.fixture
def half_second_deadline():
    import gbpo.grading as grading

    previous = grading.configure_grading(batch_deadline_s=0.5)["batch_deadline_s"]
    yield 0.5
    grading.configure_grading(batch_deadline_s=previous)


def test_one_grading_deadline_bounds_the_whole_reward_call(monkeypatch, half_second_deadline):
    """32 groups (a generation batch) whose answers all need symbolic work that runs to the deadline: with one deadline
    for the whole reward call they take about one deadline (0.5 s), not 32 (16 s); past it the keys decide."""
    import time

    import gbpo.grading.voting as voting

    deadlines = []
    monkeypatch.setattr(voting, "_symbolic_pairs", slow_symbolic(deadlines))
    groups = 32
    prompts = [[{"role": "user", "content": f"Simplify expression {i}"}] for i in range(groups) for _ in range(2)]
    completions = [conv(f"\\boxed{{x^{i} + y}}") if j == 0 else conv(f"\\boxed{{y + x^{i}}}")
                   for i in range(groups) for j in range(2)]  # fmt: skip
    start = time.monotonic()
    rewards = MajorityVoteReward(num_generations=2)(prompts=prompts, completions=completions)
    elapsed = time.monotonic() - start
    assert len(deadlines) == groups and len(set(deadlines)) == 1  # every group got the call's one deadline
    assert elapsed < half_second_deadline * 4, elapsed  # per-group deadlines would take 32 x 0.5 s
    assert rewards == [1.0, 0.0] * groups  # unresolved pairs stay apart: the first answer of each group wins


def test_one_grading_deadline_bounds_an_accuracy_call(monkeypatch, half_second_deadline):
    import time

    import gbpo.grading.equivalence as equivalence

    deadlines = []
    monkeypatch.setattr(equivalence, "_symbolic_pairs", slow_symbolic(deadlines))
    n = 32
    completions = [conv(f"\\boxed{{y + x^{i}}}") for i in range(n)]
    start = time.monotonic()
    rewards = AccuracyReward()(completions=completions, answer=[f"x^{i} + y" for i in range(n)])
    elapsed = time.monotonic() - start
    assert len(deadlines) == n and len(set(deadlines)) == 1
    assert elapsed < half_second_deadline * 4, elapsed
    assert rewards == [0.0] * n  # undecided past the deadline: the keys differ, so not equivalent


def test_majority_vote_of_none_is_a_clear_type_error():
    from gbpo.grading import majority_vote

    with pytest.raises(TypeError, match="answers must be an iterable of answers"):
        majority_vote(None)
    with pytest.raises(TypeError, match="got str"):
        majority_vote("42")


def test_majority_vote_rejects_bad_arguments_by_name():
    with pytest.raises(ValueError, match="answer_extraction"):
        MajorityVoteReward(4, answer_extraction="loose")
    with pytest.raises(ValueError, match="answer_extraction"):
        AccuracyReward(answer_extraction=None)
    with pytest.raises(ValueError, match="num_generations"):
        MajorityVoteReward(True)
    with pytest.raises(ValueError, match="num_generations"):
        MajorityVoteReward("8")


UNBOXED = [
    "The final answer is $12$. I hope it is correct.",
    "Adding, 7 + 5 = 12. Therefore $x = 12$.",
    "We get \\[ 12 \\]",
    "\\boxed{13}",
]


def test_answer_extraction_strict_is_the_default_and_lenient_reads_unboxed_answers():
    prompts = ["What is 7 + 5?"] * 4
    # strict (default, unchanged): only the boxed 13 answers, so it wins alone
    assert MajorityVoteReward(4)(prompts=prompts, completions=UNBOXED) == [0.0, 0.0, 0.0, 1.0]
    assert MajorityVoteReward(4, answer_extraction="strict")(prompts=prompts, completions=UNBOXED) == [0, 0, 0, 1]
    lenient = MajorityVoteReward(4, answer_extraction="lenient")
    assert lenient(prompts=prompts, completions=UNBOXED) == [1.0, 1.0, 1.0, 0.0]
    assert AccuracyReward()(completions=UNBOXED, answer=["12"] * 4) == [0.0, 0.0, 0.0, 0.0]
    assert AccuracyReward(answer_extraction="lenient")(completions=UNBOXED, answer=["12"] * 4) == [1, 1, 1, 0]


def test_unlabeled_data_majority_vote_without_gold_answers():
    """TTRL on unlabeled rows: no 'answer' column, or None/blank in some rows. Rewards never change; the gold metrics
    cover only the groups that have a gold answer, and are not logged when none has."""
    reward = MajorityVoteReward(num_generations=4)
    logged = {}
    assert reward(prompts=PROMPTS, completions=COMPLETIONS, log_metric=logged.__setitem__) == EXPECTED
    assert set(logged) == {"ttrl/majority_ratio"}

    logged.clear()
    rewards = reward(prompts=PROMPTS, completions=COMPLETIONS, answer=[None] * 8, log_metric=logged.__setitem__)
    assert rewards == EXPECTED and set(logged) == {"ttrl/majority_ratio"}

    # only group B is labelled (gold 1/2): its label is right, its 4 pseudo-rewards match, 2 of its 4 are right
    logged.clear()
    rewards = reward(
        prompts=PROMPTS, completions=COMPLETIONS, answer=[None] * 4 + ["1/2"] * 4, log_metric=logged.__setitem__
    )
    assert rewards == EXPECTED
    assert logged["ttrl/label_accuracy"] == pytest.approx(1.0)
    assert logged["ttrl/reward_accuracy"] == pytest.approx(1.0)
    assert logged["ttrl/gold_reward"] == pytest.approx(2 / 4)

    # only group A is labelled, wrongly by the vote (gold 141): label 0/1; pseudo-rewards match on none of A's 4
    logged.clear()
    reward(prompts=PROMPTS, completions=COMPLETIONS, answer=["141"] * 4 + [""] * 4, log_metric=logged.__setitem__)
    assert logged["ttrl/label_accuracy"] == pytest.approx(0.0)
    assert logged["ttrl/reward_accuracy"] == pytest.approx(0.0)
    assert logged["ttrl/gold_reward"] == pytest.approx(1 / 4)


def test_accuracy_reward_says_it_needs_the_answer_column():
    with pytest.raises(ValueError, match="needs the gold answers: the dataset has no 'answer' column"):
        AccuracyReward()(completions=COMPLETIONS)
    with pytest.raises(
        ValueError, match="empty .None or blank. for 2 completion.s. of this batch, the first at index 1"
    ):
        AccuracyReward()(completions=["\\boxed{1}"] * 3, answer=["1", None, float("nan")])


def test_recipe_key_answer_extraction_reaches_the_rewards():
    from gbpo import GBPOConfig
    from gbpo.train import GBPOScriptArguments, build_reward_funcs

    args = GBPOConfig(output_dir="unused", num_generations=4, use_cpu=True, bf16=False, report_to=[])
    default = build_reward_funcs(GBPOScriptArguments(reward_funcs=["majority_vote", "accuracy"]), args)
    assert [f.answer_extraction for f in default] == ["strict", "strict"]
    script = GBPOScriptArguments(reward_funcs=["majority_vote", "accuracy"], answer_extraction="lenient")
    majority, accuracy = build_reward_funcs(script, args)
    assert majority(prompts=["What is 7 + 5?"] * 4, completions=UNBOXED) == [1.0, 1.0, 1.0, 0.0]
    assert accuracy(completions=UNBOXED, answer=["12"] * 4) == [1.0, 1.0, 1.0, 0.0]
