"""Reward functions for TRL's trainers: the TTRL majority vote (no labels) and accuracy against a gold answer.

Both follow TRL's reward-function protocol: called with ``prompts``, ``completions`` and every dataset column as
keyword lists (one entry per completion of this process), they return one float per completion. Both are usable with
`trl.GRPOTrainer` as well as with `gbpo.GBPOTrainer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from accelerate import PartialState
from accelerate.utils import gather_object

from .grading import ANSWER_EXTRACTION, answers_equivalent, extract_answer, grading_deadline, majority_vote

__all__ = ["AccuracyReward", "MajorityVoteReward", "accuracy_reward", "completion_text"]


def _answer_reader(fallback_last_number: bool, answer_extraction: str, owner: str) -> Callable[[Any], str | None]:
    """The function that reads a completion's final answer, after checking the mode's name."""
    if answer_extraction not in ANSWER_EXTRACTION:
        raise ValueError(
            f"{owner}: answer_extraction must be one of {ANSWER_EXTRACTION}, got {answer_extraction!r} (strict: the "
            "last \\boxed{}; lenient: also answers that are not boxed, see gbpo.grading.extract_answer)."
        )
    lenient = answer_extraction == "lenient"
    return lambda c: extract_answer(completion_text(c), fallback_last_number, lenient=lenient)


def _has_gold(value: Any) -> bool:
    """A row has a gold answer: not None, not NaN (a missing cell read by pandas), not blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(str(value).strip())


def completion_text(completion: Any) -> str:
    """The text of one completion, standard (a string) or conversational (a list of messages, the last one's content).

    Raises:
        TypeError: for anything else, naming the type.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # content blocks: keep the text ones
            return "".join(block.get("text", "") for block in content if isinstance(block, dict))
        return content or ""
    raise TypeError(
        f"A completion must be a string or a list of chat messages, got {type(completion).__name__}: {completion!r:.80}"
    )


class AccuracyReward:
    """Reward 1.0 when a completion's final answer is equivalent to the gold ``answer`` column, else 0.0.

    The ordinary verifiable reward (RLVR). The final answer is the last ``\\boxed{...}`` (brace-matched); with
    ``fallback_last_number=True`` a completion without a box is judged by its last number instead.

    Symbolic grading for the whole call (a generation batch) shares one deadline (``gbpo.grading.grading_deadline``).

    Args:
        fallback_last_number: use the last number of a completion that boxes nothing (for models that rarely box).
        answer_extraction: ``"strict"`` (default: the last box) or ``"lenient"`` (also unboxed answers: the answer after
            "final answer is", the last math, the last number; see `gbpo.grading.extract_answer`).

    Raises:
        ValueError: ``answer_extraction`` is not ``"strict"`` or ``"lenient"``.
        ValueError (when called): the dataset has no ``answer`` column, or a row's ``answer`` is missing (None/blank;
            the message names the row).
    """

    __name__ = "accuracy"

    def __init__(self, fallback_last_number: bool = False, answer_extraction: str = "strict"):
        self.fallback_last_number = fallback_last_number
        self.answer_extraction = answer_extraction
        self._read = _answer_reader(fallback_last_number, answer_extraction, "AccuracyReward")

    def __call__(self, completions: list, answer: Sequence[Any] | None = None, **kwargs) -> list[float]:
        if answer is None:
            raise ValueError(
                "accuracy reward needs the gold answers: the dataset has no 'answer' column. Add one, or use the "
                "majority-vote (TTRL) reward for unlabeled data."
            )
        missing = [i for i, g in enumerate(answer) if not _has_gold(g)]
        if missing:
            raise ValueError(
                f"accuracy reward needs a gold answer in every row: the 'answer' column is empty (None or blank) for "
                f"{len(missing)} completion(s) of this batch, the first at index {missing[0]}. Fill it, or use the "
                "majority-vote (TTRL) reward for unlabeled data."
            )
        predicted = [self._read(c) for c in completions]
        deadline = grading_deadline()  # one bound on symbolic grading for the whole call
        return [
            float(p is not None and answers_equivalent(str(g), p, deadline=deadline))
            for g, p in zip(answer, predicted, strict=True)
        ]


accuracy_reward = AccuracyReward()


class MajorityVoteReward:
    """TTRL reward (TTRL, arXiv 2504.16084; docs/algorithm.md, "TTRL: rewards without labels"): majority vote over
    each prompt's group as the pseudo-label.

    The final answers of a prompt's ``num_generations`` completions vote (answer equivalence via `gbpo.grading`, not
    string equality); a completion earns 1.0 when its answer is in the winning class, else 0.0 (no answer, or a
    minority answer). The label is decided from the completions alone, so the data needs no gold answer: the ``answer``
    column may be missing, or None/blank in some rows. Where a row has one, it is read only after the rewards are
    fixed, for the logged ``ttrl/label_accuracy`` (pseudo-label equivalent to the gold answer, over the groups with
    one), ``ttrl/reward_accuracy`` (pseudo-reward equal to the gold reward) and ``ttrl/gold_reward`` (over the
    completions of those groups); with no gold answer in the batch these three are not logged.
    ``ttrl/majority_ratio`` is the winning class's share of the group's votes (unanswered completions count).

    TRL calls reward functions on each process's own slice of the batch, and a group can span processes (whenever
    ``per_device_train_batch_size * steps_per_generation`` is not a multiple of ``num_generations``). The extracted
    answers are therefore gathered from every process (consecutive slices in rank order, TRL's layout), every group
    votes whole, and each process keeps the rewards of its own slice.

    Symbolic grading for the whole call (every group of the generation batch, and the gold metrics) shares one
    deadline (``gbpo.grading.grading_deadline``), so many hard groups cannot stall a step group after group.

    Args:
        num_generations: G, the number of completions per prompt (TRL's ``num_generations``); the gathered batch must
            hold whole groups of G consecutive completions of one prompt.
        fallback_last_number: a completion that boxes nothing votes with its last number (for models that rarely box).
        answer_extraction: ``"strict"`` (default: the last box, as before) or ``"lenient"`` (also unboxed answers: the
            answer after "final answer is", the last math, the last number; see `gbpo.grading.extract_answer`). The
            recipe key ``answer_extraction`` of ``gbpo.train``.

    Raises:
        ValueError: ``num_generations`` is not a positive integer, or ``answer_extraction`` is not ``"strict"`` or
            ``"lenient"``.
        ValueError (when called): the gathered batch is not whole groups of ``num_generations``, or a group mixes
            prompts (G does not match the trainer's ``num_generations``).
    """

    __name__ = "majority_vote"

    def __init__(self, num_generations: int, fallback_last_number: bool = False, answer_extraction: str = "strict"):
        if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 1:
            raise ValueError(f"num_generations must be an integer >= 1, got {num_generations!r}.")
        self.num_generations = num_generations
        self.fallback_last_number = fallback_last_number
        self.answer_extraction = answer_extraction
        self._read = _answer_reader(fallback_last_number, answer_extraction, "MajorityVoteReward")

    def __call__(
        self,
        prompts: list,
        completions: list,
        answer: Sequence[Any] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs,
    ) -> list[float]:
        answers = [self._read(c) for c in completions]
        prompt_keys = [repr(p) for p in prompts]
        state = PartialState()
        if state.num_processes > 1:
            answers, prompt_keys = gather_object(answers), gather_object(prompt_keys)
        g = self.num_generations
        if len(answers) % g != 0:
            raise ValueError(
                f"majority_vote got {len(answers)} completions over all processes, not a multiple of "
                f"num_generations={g}: set the reward's num_generations to the trainer's."
            )
        rewards, ratios, labels = [], [], []
        deadline = grading_deadline()  # one bound on symbolic grading for the whole batch, not one per group
        for start in range(0, len(answers), g):
            if len(set(prompt_keys[start : start + g])) != 1:
                raise ValueError(
                    f"majority_vote: completions {start}..{start + g - 1} do not share one prompt, so they are not one "
                    f"group of num_generations={g}: set the reward's num_generations to the trainer's."
                )
            vote = majority_vote(answers[start : start + g], deadline=deadline)
            rewards.extend(1.0 if won else 0.0 for won in vote.winners)
            ratios.append(vote.ratio)
            labels.append(vote.label)

        if log_metric is not None:
            log_metric("ttrl/majority_ratio", sum(ratios) / len(ratios))
            if answer is not None:
                self._log_gold_metrics(log_metric, answer, answers, labels, rewards, state, deadline)

        local = len(completions)
        start = state.process_index * local if state.num_processes > 1 else 0
        return rewards[start : start + local]

    def _log_gold_metrics(self, log_metric, answer, answers, labels, rewards, state, deadline):
        # Only for logging, after the rewards are fixed: the gold answer never reaches them. Rows without a gold
        # answer (unlabeled data) are left out of these metrics.
        gold = [str(a) if _has_gold(a) else None for a in answer]
        if state.num_processes > 1:
            gold = gather_object(gold)
        g = self.num_generations
        group_gold = gold[::g]
        labelled = [k for k, gold_answer in enumerate(group_gold) if gold_answer is not None]
        if not labelled:
            return
        label_right = [
            labels[k] is not None and answers_equivalent(group_gold[k], labels[k], deadline=deadline) for k in labelled
        ]
        rows = [i for k in labelled for i in range(k * g, (k + 1) * g)]
        true_rewards = [
            float(answers[i] is not None and answers_equivalent(group_gold[i // g], answers[i], deadline=deadline))
            for i in rows
        ]
        log_metric("ttrl/label_accuracy", sum(label_right) / len(label_right))
        log_metric(
            "ttrl/reward_accuracy", sum(t == rewards[i] for t, i in zip(true_rewards, rows, strict=True)) / len(rows)
        )
        log_metric("ttrl/gold_reward", sum(true_rewards) / len(true_rewards))
