"""Reward functions for TRL's trainers: the TTRL majority vote (no labels) and accuracy against a gold answer.

Both follow TRL's reward-function protocol: called with ``prompts``, ``completions`` and every dataset column as
keyword lists (one entry per completion of this process), they return one float per completion. Both are usable with
`trl.GRPOTrainer` as well as with `gbpo.GBPOTrainer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from accelerate import PartialState
from accelerate.utils import gather_object

from .grading import answers_equivalent, extract_answer, grading_deadline, majority_vote

__all__ = ["AccuracyReward", "MajorityVoteReward", "accuracy_reward", "completion_text"]


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

    Args:
        fallback_last_number: use the last number of a completion that boxes nothing (for models that rarely box).

    Raises:
        ValueError (when called): the dataset has no ``answer`` column.
    """

    __name__ = "accuracy"

    def __init__(self, fallback_last_number: bool = False):
        self.fallback_last_number = fallback_last_number

    def __call__(self, completions: list, answer: Sequence[Any] | None = None, **kwargs) -> list[float]:
        if answer is None:
            raise ValueError(
                "accuracy reward needs the gold answers: the dataset has no 'answer' column. Add one, or use the "
                "majority-vote (TTRL) reward for unlabeled data."
            )
        predicted = [extract_answer(completion_text(c), self.fallback_last_number) for c in completions]
        return [float(p is not None and answers_equivalent(str(g), p)) for g, p in zip(answer, predicted, strict=True)]


accuracy_reward = AccuracyReward()


class MajorityVoteReward:
    """TTRL reward (TTRL, arXiv 2504.16084; docs/algorithm.md, "TTRL: rewards without labels"): majority vote over
    each prompt's group as the pseudo-label.

    The final answers of a prompt's ``num_generations`` completions vote (answer equivalence via `gbpo.grading`, not
    string equality); a completion earns 1.0 when its answer is in the winning class, else 0.0 (no answer, or a
    minority answer). The label is decided from the completions alone: the gold ``answer`` column, when the dataset has
    one, is read only after the rewards are fixed, for the logged ``ttrl/label_accuracy`` (pseudo-label equivalent to
    the gold answer, per group) and ``ttrl/reward_accuracy`` (pseudo-reward equal to the gold reward, per completion).
    ``ttrl/majority_ratio`` is the winning class's share of the group's votes (unanswered completions count).

    TRL calls reward functions on each process's own slice of the batch, and a group can span processes (whenever
    ``per_device_train_batch_size * steps_per_generation`` is not a multiple of ``num_generations``). The extracted
    answers are therefore gathered from every process (consecutive slices in rank order, TRL's layout), every group
    votes whole, and each process keeps the rewards of its own slice.

    Args:
        num_generations: G, the number of completions per prompt (TRL's ``num_generations``); the gathered batch must
            hold whole groups of G consecutive completions of one prompt.
        fallback_last_number: a completion that boxes nothing votes with its last number (for models that rarely box).

    Raises:
        ValueError (when called): the gathered batch is not whole groups of ``num_generations``, or a group mixes
            prompts (G does not match the trainer's ``num_generations``).
    """

    __name__ = "majority_vote"

    def __init__(self, num_generations: int, fallback_last_number: bool = False):
        if not isinstance(num_generations, int) or num_generations < 1:
            raise ValueError(f"num_generations must be an integer >= 1, got {num_generations!r}.")
        self.num_generations = num_generations
        self.fallback_last_number = fallback_last_number

    def __call__(
        self,
        prompts: list,
        completions: list,
        answer: Sequence[Any] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs,
    ) -> list[float]:
        answers = [extract_answer(completion_text(c), self.fallback_last_number) for c in completions]
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
        # Only for logging, after the rewards are fixed: the gold answer never reaches them.
        gold = [str(a) for a in answer]
        if state.num_processes > 1:
            gold = gather_object(gold)
        g = self.num_generations
        group_gold = gold[::g]
        label_right = [
            label is not None and answers_equivalent(gold_answer, label, deadline=deadline)
            for gold_answer, label in zip(group_gold, labels, strict=True)
        ]
        true_rewards = [
            float(a is not None and answers_equivalent(group_gold[i // g], a, deadline=deadline))
            for i, a in enumerate(answers)
        ]
        log_metric("ttrl/label_accuracy", sum(label_right) / len(label_right))
        log_metric(
            "ttrl/reward_accuracy", sum(t == r for t, r in zip(true_rewards, rewards, strict=True)) / len(rewards)
        )
        log_metric("ttrl/gold_reward", sum(true_rewards) / len(true_rewards))
