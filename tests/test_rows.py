"""Row selection (gbpo.rows) and its use in the trainer: vote-N/train-M, informative groups, the exact normaliser."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from tiny import CPU_RUN
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOTrainer

from gbpo import GBPOConfig, GBPOTrainer
from gbpo.loss import gbpo_advantages, target_ratio
from gbpo.rows import concat_rows, informative_rows, rows_per_process, select_rows, take_rows, trained_mask

# ---------------------------------------------------------------- pure functions


def test_trained_mask_positions():
    assert trained_mask(4, 4, 2).tolist() == [True, False, True, False]
    assert trained_mask(8, 4, 4).all()
    assert trained_mask(64, 64, 32).nonzero().flatten().tolist() == list(range(0, 64, 2))
    assert trained_mask(5, 5, 2).nonzero().flatten().tolist() == [0, 3]  # (j*2) mod 5 < 2: j = 0 (0), 3 (1)
    with pytest.raises(ValueError, match="whole groups"):
        trained_mask(6, 4, 2)


@pytest.mark.parametrize(("n", "m", "per_process"), [(4, 2, 2), (8, 6, 4), (64, 32, 32), (4, 3, 4), (6, 4, 3)])
def test_trained_mask_is_even_over_processes_and_groups(n, m, per_process):
    """Every group trains M; every process's contiguous slice trains per_process * M / N, even when groups span."""
    assert per_process * m % n == 0
    num_processes = n  # n processes x per_process rows: a multiple of n rows in total
    mask = trained_mask(num_processes * per_process, n, m)
    assert mask.view(-1, n).sum(1).tolist() == [m] * per_process
    assert mask.view(num_processes, per_process).sum(1).tolist() == [per_process * m // n] * num_processes


def test_informative_rows_look_at_the_trained_rows_only():
    advantages = torch.tensor([0.0, 0.0, 0.0, 0.7, 1.0, 0.0, -1.0, 0.0])
    trained = torch.tensor([True, False, True, False] * 2)
    # group 0: its only nonzero advantage is on a voted-only row -> uninformative; group 1: informative
    assert informative_rows(advantages, trained, 4).tolist() == [False] * 4 + [True] * 4
    assert not informative_rows(torch.full((4,), 1e-7), torch.ones(4, dtype=torch.bool), 4).any()


def test_rows_per_process():
    assert rows_per_process([3, 1], cap=8, steps_per_generation=2) == 4  # max 3, rounded up to 2 micro-batches
    assert rows_per_process([0, 0], cap=8, steps_per_generation=2) == 2  # at least one row per micro-batch
    assert rows_per_process([9, 2], cap=8, steps_per_generation=2) == 8  # never above the full batch
    with pytest.raises(ValueError, match="steps_per_generation"):
        rows_per_process([1], cap=3, steps_per_generation=2)


def test_select_rows_keeps_informative_candidates_then_fills():
    candidates = torch.tensor([True, False, True, False, True, False, True, False])
    informative = torch.tensor([False] * 4 + [True] * 4)
    index, in_loss = select_rows(candidates, informative, 2)
    assert index.tolist() == [4, 6] and in_loss.tolist() == [True, True]
    index, in_loss = select_rows(candidates, informative, 4)  # two filler rows: the first remaining candidates
    assert index.tolist() == [0, 2, 4, 6] and in_loss.tolist() == [False, False, True, True]
    index, in_loss = select_rows(candidates, torch.zeros(8, dtype=torch.bool), 1)
    assert index.tolist() == [0] and in_loss.tolist() == [False]
    with pytest.raises(ValueError, match="cannot keep 9"):
        select_rows(candidates, informative, 9)


def batch(prompt_lens, completion_lens, pad=0, prompt_width=4, completion_width=5, offset=0):
    rows = len(prompt_lens)
    prompt_mask = torch.tensor([[0] * (prompt_width - n) + [1] * n for n in prompt_lens])
    completion_mask = torch.tensor([[1] * n + [0] * (completion_width - n) for n in completion_lens])
    ids = torch.arange(1, 1 + rows).unsqueeze(1) + offset
    return {
        "prompt_ids": torch.where(prompt_mask.bool(), ids, pad),
        "prompt_mask": prompt_mask,
        "completion_ids": torch.where(completion_mask.bool(), ids, pad),
        "completion_mask": completion_mask,
        "old_per_token_logps": -completion_mask.float(),
        "advantages": torch.arange(rows, dtype=torch.float) + offset,
        "num_items_in_batch": completion_mask.sum(),
    }


def test_take_rows_slices_and_trims_padding():
    b = batch(prompt_lens=[4, 2, 1], completion_lens=[5, 2, 3])
    out = take_rows(b, torch.tensor([1, 2]), pad_token_id=0, trim_prompt=True)
    assert out["prompt_mask"].tolist() == [[1, 1], [0, 1]]  # two leading all-padding prompt columns cut
    assert out["completion_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]  # completion cut after the longest kept row
    assert out["completion_ids"].tolist() == [[2, 2, 0], [3, 3, 3]]
    assert out["old_per_token_logps"].shape == (2, 3) and out["advantages"].tolist() == [1.0, 2.0]
    assert take_rows(b, torch.tensor([1, 2]), 0, trim_prompt=False)["prompt_ids"].shape == (2, 4)
    with pytest.raises(ValueError, match="pixel_values"):
        take_rows({**b, "pixel_values": torch.zeros(3, 2)}, torch.tensor([0]), 0, trim_prompt=False)


def test_concat_rows_pads_prompts_left_and_completions_right():
    a = batch([2], [1], prompt_width=2, completion_width=1)
    b = batch([3], [3], prompt_width=3, completion_width=3, offset=10)
    out = concat_rows([a, b], pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[0, 1, 1], [11, 11, 11]]
    assert out["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out["completion_ids"].tolist() == [[1, 0, 0], [11, 11, 11]]
    assert out["old_per_token_logps"].tolist() == [[-1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]]
    assert out["advantages"].tolist() == [0.0, 10.0] and out["num_items_in_batch"] == 4


# ---------------------------------------------------------------- configuration

BASE = dict(output_dir="unused", report_to="none", bf16=False, use_cpu=True, num_generations=4)


def test_config_rejects_normalize_then_sum_with_vote_n_train_m():
    # the example: accepted and silently ignored before
    with pytest.raises(ValueError, match="multi_objective_aggregation='normalize_then_sum'.*num_train_generations"):
        GBPOConfig(
            **BASE,
            per_device_train_batch_size=4,
            loss_type="dapo",
            num_train_generations=2,
            multi_objective_aggregation="normalize_then_sum",
        )
    args = GBPOConfig(
        **BASE, per_device_train_batch_size=4, loss_type="dapo", multi_objective_aggregation="normalize_then_sum"
    )
    assert args.num_train_generations is None


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "bnpo", "dapo", "cispo", "sapo", "gbpo"])
def test_config_accepts_every_loss_type_with_vote_n_train_m(loss_type):
    args = GBPOConfig(**BASE, per_device_train_batch_size=4, loss_type=loss_type, num_train_generations=2)
    assert args.num_train_generations == 2


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"per_device_train_batch_size": 6, "steps_per_generation": 2, "num_train_generations": 3},
            "per_device_train_batch_size=6 x num_train_generations=3 must be a multiple of num_generations=4",
        ),
        (
            {"per_device_train_batch_size": 2, "steps_per_generation": 2, "num_train_generations": 3},
            "per_device_train_batch_size=2 x num_train_generations=3",
        ),
        ({"per_device_train_batch_size": 4, "max_extra_generation_rounds": 2}, "drop_uninformative_groups=True"),
        ({"per_device_train_batch_size": 4, "max_extra_generation_rounds": -1}, "max_extra_generation_rounds"),
        (
            {"per_device_train_batch_size": 4, "steps_per_generation": 3, "gradient_accumulation_steps": 2},
            "gradient_accumulation_steps=2 must divide steps_per_generation=3",
        ),
    ],
)
def test_config_rejects_uneven_layouts_naming_the_keys(overrides, match):
    with pytest.raises(ValueError, match=match):
        GBPOConfig(**BASE, **overrides)


# ---------------------------------------------------------------- in the trainer


def vote_reward(prompts, completions, **kwargs):
    """0 for every completion of the "same" prompt (a unanimous group); a content hash otherwise."""
    return [
        0.0 if "same" in p[-1]["content"] else float(sum(map(ord, c[-1]["content"])) % 97)
        for p, c in zip(prompts, completions, strict=True)
    ]


PROMPTS = [[{"role": "user", "content": "same"}], [{"role": "user", "content": "vary"}]]


def rows_trainer(model_dir, tmp_path, **overrides):
    kw = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        steps_per_generation=2,
        gradient_accumulation_steps=2,
        num_iterations=2,  # old log-probs are computed
        beta=0.1,  # and the reference's
        num_generations=4,
        num_train_generations=2,
        drop_uninformative_groups=True,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-2,
        **CPU_RUN,
    )
    kw.update(overrides)
    trainer = GBPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        reward_funcs=vote_reward,
        args=GBPOConfig(**kw),
        train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    return trainer


def test_voted_only_rows_and_dropped_groups_never_reach_the_model(tiny_model_dir, tmp_path, monkeypatch):
    """A real run: each generation batch per process is 8 rows (the "same" and the "vary" group of 4 votes); 4 are
    trained (vote-4/train-2), the "same" group is unanimous and dropped: 2 rows enter every log-prob pass."""
    seen = []
    original = GRPOTrainer._get_per_token_logps_and_entropies

    def counting(self, model, input_ids, *args, **kwargs):
        seen.append((input_ids.size(0), torch.is_grad_enabled(), model is self.ref_model))
        return original(self, model, input_ids, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", counting)
    trainer = rows_trainer(tiny_model_dir, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    trainer.train()

    # one generation batch (max_steps 2 x accumulation 2 = 4 micro-steps = 2 steps_per_generation x 2 iterations)
    old_passes = [rows for rows, grad, ref in seen if not grad and not ref]
    ref_passes = [rows for rows, grad, ref in seen if not grad and ref]
    train_passes = [rows for rows, grad, ref in seen if grad]
    assert old_passes == [2] and ref_passes == [2]  # today's masking: 8 and 8
    assert train_passes == [1, 1, 1, 1]  # one kept row per micro-batch; today's masking: 4 rows each
    logs = {k: v for entry in trainer.state.log_history for k, v in entry.items() if k.startswith("rows/")}
    assert logs["rows/groups_dropped"] == 1 and logs["rows/extra_generation_rounds"] == 0
    assert logs["rows/trained_per_step"] == 2 and logs["rows/with_gradient_frac"] == 1
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.named_parameters())


def kept_reference(raw, rewards, kept, num_trained):
    """TRL's full generation batch reduced by hand to the rows ``kept``: the batch of a run given only those rows."""
    advantages, target_advantages = gbpo_advantages(rewards[kept], num_trained)
    ref = {key: raw[key][kept] for key in raw if key not in ("advantages", "num_items_in_batch")}
    ref["advantages"], ref["target_ratios"] = advantages, target_ratio(target_advantages)
    ref["num_items_in_batch"] = ref["completion_mask"].sum()
    return ref


def loss_and_grads(trainer, inputs):
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]


@pytest.mark.parametrize("loss_type", ["gbpo", "grpo"])
def test_loss_and_gradients_equal_a_batch_of_only_the_kept_rows(tiny_model_dir, tmp_path, loss_type):
    trainer = rows_trainer(tiny_model_dir, tmp_path, loss_type=loss_type, max_completion_length=16)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2
    inputs = [{"prompt": PROMPTS[0]}] * 4 + [{"prompt": PROMPTS[1]}] * 4
    torch.manual_seed(1)
    selected = trainer._generate_and_score_completions(inputs)
    torch.manual_seed(1)  # the same completions, through TRL's method alone (every row, every log-prob pass)
    raw = GRPOTrainer._generate_and_score_completions(trainer, inputs)
    rewards, trainer._gathered_rewards_per_func = trainer._gathered_rewards_per_func[:, 0], None
    assert rewards[:4].eq(0).all() and rewards[4::2].unique().numel() == 2  # "same" unanimous, "vary" informative

    kept = torch.tensor([4, 6])  # the trained positions 0 and 2 of the informative "vary" group
    reference = kept_reference(raw, rewards, kept, num_trained=2)
    width = selected["completion_ids"].size(1)
    assert selected["completion_ids"].shape[0] == 2
    torch.testing.assert_close(selected["completion_ids"], reference["completion_ids"][:, :width])
    assert reference["completion_mask"][:, width:].sum() == 0  # only padding was trimmed
    torch.testing.assert_close(selected["advantages"], reference["advantages"])
    # the deferred log-prob passes on the kept rows equal TRL's on every row, sliced
    for key in ("old_per_token_logps", "ref_per_token_logps"):
        torch.testing.assert_close(selected[key], reference[key][:, :width], rtol=1e-5, atol=1e-5)
    assert selected["num_items_in_batch"] == reference["num_items_in_batch"]

    loss, grads = loss_and_grads(trainer, selected)
    expected_loss, expected_grads = loss_and_grads(trainer, reference)
    assert any(
        g.abs().sum() > 0 for g in grads
    )  # GRPO's loss is 0 at ratio 1 (advantages sum to 0); its gradient is not
    torch.testing.assert_close(loss, expected_loss, rtol=1e-4, atol=1e-6)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-6)


def test_dynamic_sampling_refills_with_fresh_prompts(tiny_model_dir, tmp_path):
    """With a data set where half the prompts give unanimous groups, extra rounds fill the batch (bounded)."""
    trainer = rows_trainer(tiny_model_dir, tmp_path, max_extra_generation_rounds=3, beta=0.0)
    trainer.model.train()
    inputs = [{"prompt": PROMPTS[0]}] * 8  # both groups unanimous: the first round has nothing to train
    output = trainer._generate_and_score_completions(inputs)
    rounds = trainer._metrics["train"]["rows/extra_generation_rounds"][-1]
    dropped = trainer._metrics["train"]["rows/groups_dropped"][-1]
    assert 1 <= rounds <= 3 and dropped >= 2  # the two unanimous groups of the first round at least
    informative = output["advantages"].abs() > 0
    if rounds < 3:  # stopped early: the batch is full (8 x 2 / 4 rows) of informative rows from fresh prompts
        assert output["completion_ids"].size(0) == 4 and informative.all()
    else:
        assert output["completion_ids"].size(0) in (2, 4)


def test_normaliser_is_the_token_count_of_each_optimizer_step(tiny_model_dir, tmp_path):
    """steps_per_generation 4, gradient_accumulation_steps 1 (the paper recipes' layout): each micro-batch is an
    optimizer step, and its loss is its own token mean (not the generation batch's average count)."""
    trainer = rows_trainer(
        tiny_model_dir,
        tmp_path,
        per_device_train_batch_size=2,
        steps_per_generation=4,
        gradient_accumulation_steps=1,
        num_iterations=1,
        beta=0.0,
        num_train_generations=None,
        drop_uninformative_groups=False,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    lengths = [(1, 2), (3, 6), (2, 2), (5, 1)]  # tokens per micro-batch: 3, 9, 4, 6 (mean 5.5)
    advantages = torch.tensor([[1.0, -2.0], [0.5, 1.5], [-1.0, 3.0], [2.0, -0.5]])
    targets = torch.tensor([[1.3, 0.7], [1.3, 0.7], [0.7, 1.3], [1.3, 0.7]])
    chunks = []
    for (a, b), adv, tgt in zip(lengths, advantages, targets, strict=True):
        mask = torch.tensor([[1] * a + [0] * (6 - a), [1] * b + [0] * (6 - b)])
        chunks.append(
            {
                "prompt_ids": torch.full((2, 3), 5),
                "prompt_mask": torch.ones(2, 3, dtype=torch.long),
                "completion_ids": torch.full((2, 6), 7),
                "completion_mask": mask,
                "advantages": adv,
                "target_ratios": tgt,
                "num_items_in_batch": torch.tensor(22),
            }
        )
    trainer._buffered_inputs = chunks
    for step, ((a, b), adv, tgt) in enumerate(zip(lengths, advantages, targets, strict=True)):
        trainer._step = step
        # without old log-probs the ratio is exactly 1: token loss |A| |1 - r*|, summed over tokens / this step's tokens
        hand = (a * adv[0].abs() * (1 - tgt[0]).abs() + b * adv[1].abs() * (1 - tgt[1]).abs()) / (a + b)
        loss = trainer._compute_loss(trainer.model, chunks[step])
        torch.testing.assert_close(loss, hand, rtol=1e-5, atol=1e-6)

    # two micro-batches per step: the step's tokens are those of chunks (0, 1), then (2, 3)
    trainer.args.gradient_accumulation_steps = 2
    trainer._step = 1
    loss = trainer._compute_loss(trainer.model, chunks[1])
    hand = (3 * 0.5 * 0.3 + 6 * 1.5 * 0.3) / (3 + 9)
    torch.testing.assert_close(loss, torch.tensor(hand), rtol=1e-5, atol=1e-6)


def test_two_ranks_keep_the_same_number_of_rows(tiny_model_dir, tmp_path):
    """torchrun, 2 CPU processes: groups dropped unevenly over the ranks; each rank still trains the same number of
    rows (the larger informative count rounded up to steps_per_generation), the other rank filling up with rows that
    are in no loss term."""
    from test_distributed import free_port

    script = Path(__file__).parent / "scripts" / "rows_run.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    result = subprocess.run(
        [*launcher, str(free_port()), str(script), str(tmp_path), str(tiny_model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["num_processes"] == 2
    uneven = 0
    for b0, b1 in zip(ranks[0]["batches"], ranks[1]["batches"], strict=True):
        # 2 trained rows per "vary" group on each rank (its 2 groups of 4 are whole: 8 rows per rank)
        informative = [2 * sum(p.startswith("vary") for p in b["local_prompts"][::4]) for b in (b0, b1)]
        assert b0["rows"] == b1["rows"] == rows_per_process(informative, cap=4, steps_per_generation=2)
        assert [b0["in_loss"], b1["in_loss"]] == informative
        for b in (b0, b1):  # rows in the loss carry a gradient; filler rows have no loss tokens
            assert all(abs(a) > 0 for a, used in zip(b["advantages"], b["in_loss_rows"], strict=True) if used)
        uneven += informative[0] != informative[1]
    assert uneven > 0, "the sampler never split the informative groups unevenly: the test saw no filler"


def test_resume_mid_cycle_is_exact_when_rows_are_dropped(tmp_path, tiny_model_dir, monkeypatch):
    """gbpo.checkpoints saves TRL's generation buffer mid-cycle; with vote-4/train-2 and group filtering it holds
    only the kept rows (at most 4 of the 8 generated per process). A SIGTERM during step 3 of a 4-step cycle
    (num_iterations 2 x steps_per_generation 2), then a resume, logs the same steps and ends with the same weights."""

    from test_checkpoints import run_preempted, steps
    from test_train import tiny_recipe

    from gbpo.train import main

    settings = dict(
        max_steps=8, num_iterations=2, steps_per_generation=2, dataset_limit=8, save_strategy="no", learning_rate=0.05,
        num_train_generations=2, drop_uninformative_groups=True, max_extra_generation_rounds=1,
    )  # fmt: skip
    reference = main([str(tiny_recipe(tmp_path / "reference", tiny_model_dir, **settings))])

    recipe = tiny_recipe(tmp_path / "preempted", tiny_model_dir, **settings)
    out = tmp_path / "preempted" / "out"
    preempted = run_preempted(recipe, monkeypatch, step=3)
    assert preempted.preempted and preempted.state.global_step == 3
    buffer = torch.load(out / "checkpoint-3" / "generation_buffer_0.pt", weights_only=False)
    rows = [chunk["completion_ids"].size(0) for chunk in buffer["buffered_inputs"]]
    assert len(rows) == 2 and rows[0] == rows[1] and sum(rows) <= 4  # kept rows only, split evenly

    resumed = main([str(recipe), "--resume_from_checkpoint", "true"])
    assert resumed.state.global_step == 8
    got, want = steps(out), {m["step"]: m for m in reference.state.log_history if "loss" in m}
    assert sorted(got) == sorted(want) == list(range(1, 9))
    assert any(m.get("rows/groups_dropped", 0) > 0 for m in want.values())  # groups were dropped in this run
    for step in range(1, 9):
        for key in ("loss", "grad_norm", "reward", "rows/trained_per_step", "rows/groups_dropped"):
            assert (key in got[step]) == (key in want[step]), (step, key)
            if key in want[step]:
                assert got[step][key] == pytest.approx(want[step][key], rel=1e-5, abs=1e-7), (step, key)
    trained, expected = resumed.model.state_dict(), reference.model.state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-5, atol=1e-7, msg=name)


def test_ppo_br_enters_the_mean_reward_of_the_rows_it_trains(tiny_model_dir, tmp_path):
    """PPO-BR's reward window gets one entry per training batch: the mean reward of the rows the batch trains on
    (after vote-N/train-M, the dropped unanimous groups and every dynamic-sampling round), recomputed here from the
    kept rows' own text, not of all generated rows or of the last round."""
    trainer = rows_trainer(tiny_model_dir, tmp_path, loss_type="ppo_br", max_extra_generation_rounds=3, beta=0.0)
    trainer.model.train()
    inputs = [{"prompt": PROMPTS[0]}] * 4 + [{"prompt": PROMPTS[1]}] * 4
    output = trainer._generate_and_score_completions(inputs)
    decode = trainer.processing_class.batch_decode
    in_loss = output["completion_mask"].sum(dim=1) > 0
    prompts = [[{"role": "user", "content": "same" if "same" in p else "vary"}] for p in decode(output["prompt_ids"])]
    completions = [
        [{"role": "assistant", "content": c}] for c in decode(output["completion_ids"], skip_special_tokens=True)
    ]
    rewards = torch.tensor(vote_reward(prompts, completions))
    assert in_loss.any() and all(p[0]["content"] == "vary" for p, kept in zip(prompts, in_loss, strict=True) if kept)
    assert trainer.trust_region.rewards == [pytest.approx(rewards[in_loss].mean().item())]
    trainer._generate_and_score_completions(inputs)  # the next batch: one more entry
    assert len(trainer.trust_region.rewards) == 2


@pytest.mark.parametrize("loss_type", ["grpo", "sapo", "dr_grpo", "luspo"])
def test_filler_rows_are_in_no_denominator_of_trl_losses(tiny_model_dir, tmp_path, loss_type):
    """2 rows x 4 micro-batches per generation: the "same" group is dropped and the "vary" group keeps its 2 trained
    rows, which `rows_per_process` rounds up to 4 (a row per micro-batch) with 2 filler rows. TRL's sequence means
    and dr_grpo divide by the rows: the loss and gradients must be TRL's on the 2 kept rows alone (on the old code
    they were scaled by 2/4)."""
    extra = {"importance_sampling_level": "sequence"} if loss_type == "luspo" else {}
    trainer = rows_trainer(
        tiny_model_dir,
        tmp_path,
        loss_type=loss_type,
        per_device_train_batch_size=2,
        steps_per_generation=4,
        gradient_accumulation_steps=4,
        beta=0.0,
        max_completion_length=16,
        **extra,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(1)
    batch = trainer._generate_and_score_completions([{"prompt": PROMPTS[0]}] * 4 + [{"prompt": PROMPTS[1]}] * 4)
    kept = batch["completion_mask"].sum(1) > 0  # filler rows have no loss tokens
    assert batch["completion_ids"].size(0) == 4 and kept.sum() == 2
    alone = {k: (v[kept] if v.dim() > 0 else v) for k, v in batch.items() if k != "in_loss"}

    loss, grads = loss_and_grads(trainer, batch)
    expected_loss, expected_grads = loss_and_grads(trainer, alone)  # TRL's own loss, given only the kept rows
    assert max(g.abs().max() for g in expected_grads) > 0
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-7)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-8)
