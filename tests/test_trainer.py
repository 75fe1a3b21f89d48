"""GBPOTrainer on a tiny random Qwen2: side by side with TRL's GRPOTrainer, the GBPO loss and metrics checked by hand,
real training runs."""

import math
import statistics

import pytest
import torch
from datasets import Dataset
from tiny import CPU_RUN
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from gbpo import GBPOConfig, GBPOTrainer


def digit_reward(completions, **kwargs):
    """A continuous reward: the share of digits in the completion (varies within every group)."""
    return [sum(ch.isdigit() for ch in c[0]["content"]) / max(len(c[0]["content"]), 1) for c in completions]


def char_code_reward(completions, **kwargs):
    """A reward that almost never ties: the mean character code of the completion, in [0, 1]."""
    return [sum(map(ord, c[0]["content"])) / (127 * max(len(c[0]["content"]), 1)) for c in completions]


def prompts_dataset(n=8):
    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"Count to {i}"}]} for i in range(n)])


def common_args(tmp_path, **overrides):
    kw = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-2,
        **CPU_RUN,
        temperature=1.0,
    )
    kw.update(overrides)
    return kw


def load(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def make_trainer(cls, config_cls, tiny_model_dir, tmp_path, reward=digit_reward, **overrides):
    model, tokenizer = load(tiny_model_dir)
    args = config_cls(**common_args(tmp_path, **overrides))
    trainer = cls(
        model=model, reward_funcs=reward, args=args, train_dataset=prompts_dataset(), processing_class=tokenizer
    )
    trainer.model.train()  # as inside `train()`: metrics and the accumulation normaliser are those of training
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps  # set by `train()` otherwise
    return trainer


def fake_batch(trainer, seed=0, batch=4, prompt_len=5, completion_len=6):
    """A batch as `_generate_and_score_completions` returns it, with padding and off-policy old log-probs.

    Advantages and target ratios are written out (not computed by gbpo.loss): row 1 below its group's median
    (``r* = 0.7``), row 2 at it (1.0), rows 0 and 3 above it (1.3).
    """
    gen = torch.Generator().manual_seed(seed)
    vocab = trainer.model.config.vocab_size
    completion_mask = torch.ones(batch, completion_len, dtype=torch.long)
    completion_mask[1, 4:] = 0
    completion_mask[3, 2:] = 0
    return {
        "prompt_ids": torch.randint(3, vocab, (batch, prompt_len), generator=gen),
        "prompt_mask": torch.ones(batch, prompt_len, dtype=torch.long),
        "completion_ids": torch.randint(3, vocab, (batch, completion_len), generator=gen),
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.2, -1.4, 0.3, 0.6]),
        "target_ratios": torch.tensor([1.3, 0.7, 1.0, 1.3]),
        "old_per_token_logps": -4.6 + 0.3 * torch.randn(batch, completion_len, generator=gen),
        "num_items_in_batch": completion_mask.sum(),
    }


def completion_logps(trainer, batch):
    """(B, T) log-probabilities of the completion tokens under the trainer's model, computed by hand."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    length = batch["completion_ids"].shape[1]
    logits = trainer.model(input_ids=input_ids, attention_mask=attention).logits[:, -length - 1 : -1]
    return torch.log_softmax(logits.float(), -1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)


def atv_by_hand(logps, batch):
    """GBPO's per-token loss ``|A| * |exp(logp - logp_old) - r*|`` written out (paper eq. 16 with c_tv = 0)."""
    rho = torch.exp(logps - batch["old_per_token_logps"])
    return batch["advantages"].abs()[:, None] * (rho - batch["target_ratios"][:, None]).abs()


def group_stats_by_hand(rewards):
    """TRL's z-score advantages and GBPO's hard-step target ratios (eps 0.3) of one group, in Python floats."""
    mean, std, median = statistics.fmean(rewards), statistics.stdev(rewards), statistics.median(rewards)
    advantages = [(r - mean) / (std + 1e-4) for r in rewards]
    targets = [1.3 if r > median else 0.7 if r < median else 1.0 for r in rewards]
    return torch.tensor(advantages), torch.tensor(targets)


# ---------------------------------------------------------------- a TRL loss type trains exactly as GRPOTrainer


def record(trainer):
    """Wrap the trainer's own hooks to record each generation batch's advantages and completions, and each loss."""
    seen = {"advantages": [], "completion_ids": [], "loss": []}
    generate, compute_loss = trainer._generate_and_score_completions, trainer.compute_loss

    def generate_and_record(inputs):
        output = generate(inputs)
        seen["advantages"].append(output["advantages"].detach().clone())
        seen["completion_ids"].append(output["completion_ids"].clone())
        return output

    def compute_loss_and_record(model, inputs, *args, **kwargs):
        loss = compute_loss(model, inputs, *args, **kwargs)
        seen["loss"].append(loss.detach().clone())
        return loss

    trainer._generate_and_score_completions = generate_and_record
    trainer.compute_loss = compute_loss_and_record
    return seen


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_trl_loss_type_at_defaults_trains_as_grpo_trainer(tiny_model_dir, tmp_path, loss_type):
    # Both configs at their defaults except what a short CPU run needs. num_iterations=2 and a large learning rate
    # move the ratio away from 1 on the second pass, so the clip bounds (epsilon: TRL's default 0.2) take effect.
    run = dict(
        loss_type=loss_type,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=3,
        num_iterations=2,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
    )
    runs = {}
    for name, trainer_cls, config_cls in [("grpo", GRPOTrainer, GRPOConfig), ("gbpo", GBPOTrainer, GBPOConfig)]:
        model, tokenizer = load(tiny_model_dir)
        args = config_cls(output_dir=str(tmp_path / name), **run)
        trainer = trainer_cls(
            model=model,
            reward_funcs=digit_reward,
            args=args,
            train_dataset=prompts_dataset(),
            processing_class=tokenizer,
        )
        seen = record(trainer)
        before = params(trainer.model)
        trainer.train()
        runs[name] = (trainer, seen, before)

    (grpo, seen_grpo, before), (gbpo, seen_gbpo, _) = runs["grpo"], runs["gbpo"]
    assert gbpo.args.epsilon == grpo.args.epsilon == 0.2
    assert len(seen_grpo["advantages"]) == 2 and len(seen_grpo["loss"]) == 3
    for key in ("completion_ids", "advantages", "loss"):
        assert len(seen_gbpo[key]) == len(seen_grpo[key]), key
        for ours, theirs in zip(seen_gbpo[key], seen_grpo[key], strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert any(a.abs().sum() > 0 for a in seen_grpo["advantages"])
    # The clip acted at some step, so a different epsilon would have changed the run.
    logs_grpo = [e for e in grpo.state.log_history if "loss" in e]
    logs_gbpo = [e for e in gbpo.state.log_history if "loss" in e]
    assert any(e["clip_ratio/region_mean"] > 0 for e in logs_grpo)
    # GBPO logs TRL's metrics, equal, plus the ratio metrics every loss type logs (gbpo/ratio/*, gbpo/outside_bounds/*)
    assert [sorted(set(e) - set(RATIO_METRICS)) for e in logs_gbpo] == [sorted(e) for e in logs_grpo]
    for ours, theirs in zip(logs_gbpo, logs_grpo, strict=True):
        for key in set(theirs) - {"step_time"}:  # wall-clock time is the only key allowed to differ
            assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9, nan_ok=True), key
        assert set(RATIO_METRICS) <= set(ours)
        # TRL's clip fractions count a bound only for the advantage's sign; ours whatever the sign
        for end in ("low", "high", "region"):
            assert ours[f"gbpo/outside_bounds/{end}_mean"] >= theirs[f"clip_ratio/{end}_mean"] - 1e-9, end
        assert ours["gbpo/ratio/min"] <= ours["gbpo/ratio/mean"] <= ours["gbpo/ratio/max"]
    assert logs_gbpo[0]["gbpo/ratio/max"] == pytest.approx(1.0)  # first pass over a batch: rho = 1 exactly
    assert any(e["gbpo/ratio/max"] > 1.2 for e in logs_gbpo)  # the second pass moved past 1 + eps
    after_grpo, after_gbpo = params(grpo.model), params(gbpo.model)
    assert any(not torch.equal(before[n], after_grpo[n]) for n in before)
    for name in after_grpo:
        torch.testing.assert_close(after_gbpo[name], after_grpo[name], rtol=0, atol=0, msg=name)


def test_gbpo_advantages_equal_grpo_trainers(tiny_model_dir, tmp_path):
    # Same model, prompts and sampling seed: GRPOTrainer's own advantages, and GBPO's target ratios by hand.
    batch = [{"prompt": [{"role": "user", "content": "Count to 3"}]}] * 4
    outputs = {}
    for name, trainer_cls, config_cls in [("grpo", GRPOTrainer, GRPOConfig), ("gbpo", GBPOTrainer, GBPOConfig)]:
        trainer = make_trainer(trainer_cls, config_cls, tiny_model_dir, tmp_path / name, reward=char_code_reward)
        torch.manual_seed(7)
        outputs[name] = trainer._generate_and_score_completions(batch)
    grpo, gbpo = outputs["grpo"], outputs["gbpo"]
    torch.testing.assert_close(gbpo["completion_ids"], grpo["completion_ids"], rtol=0, atol=0)
    torch.testing.assert_close(gbpo["advantages"], grpo["advantages"], rtol=1e-6, atol=1e-6)
    completions = trainer.processing_class.batch_decode(gbpo["completion_ids"], skip_special_tokens=True)
    rewards = char_code_reward([[{"content": c}] for c in completions])
    assert len(set(rewards)) == 4, rewards  # a group with spread: above, below (and at) the median
    advantages, targets = group_stats_by_hand(rewards)
    torch.testing.assert_close(gbpo["advantages"], advantages, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gbpo["target_ratios"], targets, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- the GBPO loss and its metrics in the trainer


def test_gbpo_loss_in_trainer_is_the_token_mean_of_the_atv_loss(tiny_model_dir, tmp_path):
    trainer = make_trainer(GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path)
    batch = fake_batch(trainer, seed=1)
    loss = trainer._compute_loss(trainer.model, batch)

    logps = completion_logps(trainer, batch)
    mask = batch["completion_mask"]
    expected = (atv_by_hand(logps, batch) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert trainer._metrics["train"]["policy_loss"][-1] == pytest.approx(expected.item(), rel=1e-5)


RATIO_METRICS = (
    "gbpo/ratio/mean",
    "gbpo/ratio/min",
    "gbpo/ratio/max",
    "gbpo/outside_bounds/low_mean",
    "gbpo/outside_bounds/high_mean",
    "gbpo/outside_bounds/region_mean",
)


@pytest.mark.parametrize("loss_type", ["gbpo", "dapo", "grpo", "r2vpo"])
def test_gbpo_metrics_names_and_values_on_a_hand_made_batch(tiny_model_dir, tmp_path, loss_type):
    """Every loss type logs the ratio metrics under one name, with the same values on the same batch."""
    trainer = make_trainer(GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path, loss_type=loss_type, epsilon=0.3)
    batch = fake_batch(trainer, seed=5)
    batch["completion_mask"][2] = 0  # a row with no loss tokens (as a completion that only voted): r* = 1.0
    batch["target_ratios"] = torch.tensor([1.3, 0.7, 1.0, 0.7])
    batch["num_items_in_batch"] = batch["completion_mask"].sum()
    with torch.no_grad():
        logps = completion_logps(trainer, batch)
    spread = torch.tensor([[-0.6, 0.0, 0.5, -0.1, 0.4, -0.5]] * 4)  # rho = exp(spread): below 0.7, inside, above 1.3
    batch["old_per_token_logps"] = logps - spread
    trainer._compute_loss(trainer.model, batch)

    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    # TRL's clip_ratio/* (the clip active for the advantage's sign, advantages 1.2, -1.4, 0.3, 0.6), for every loss
    # type with TRL's definition: low = rho < 0.7 with A < 0: row 1's first token -> 1 / 12; high = rho > 1.3 with
    # A > 0: row 0's two -> 2 / 12 (row 3's two loss tokens are inside); per-row fractions: row 1 1/4, row 0 2/6.
    assert metrics["clip_ratio/low_mean"] == pytest.approx(1 / 12, abs=1e-6)
    assert metrics["clip_ratio/high_mean"] == pytest.approx(2 / 12, abs=1e-6)
    assert metrics["clip_ratio/region_mean"] == pytest.approx(3 / 12, abs=1e-6)
    assert metrics["clip_ratio/low_min"] == 0.0 and metrics["clip_ratio/high_max"] == pytest.approx(2 / 6, abs=1e-6)
    # Loss tokens: row 0 all 6, row 1 the first 4, row 3 the first 2 -> 12 tokens.
    # rho < 0.7 (spread -0.6, -0.5): row 0 two, row 1 one (-0.6), row 3 one -> 4 / 12
    # rho > 1.3 (spread 0.5, 0.4):   row 0 two, row 1 one (0.5)                -> 3 / 12
    assert metrics["gbpo/outside_bounds/low_mean"] == pytest.approx(4 / 12, abs=1e-6)
    assert metrics["gbpo/outside_bounds/high_mean"] == pytest.approx(3 / 12, abs=1e-6)
    assert metrics["gbpo/outside_bounds/region_mean"] == pytest.approx(7 / 12, abs=1e-6)
    if loss_type == "gbpo":  # r* over the trained rows 0, 1 and 3 only (row 2 has no loss tokens).
        assert metrics["gbpo/target_ratio/mean"] == pytest.approx((1.3 + 0.7 + 0.7) / 3, abs=1e-6)
    else:
        assert "gbpo/target_ratio/mean" not in metrics
    rho = torch.exp(spread)[batch["completion_mask"].bool()]
    assert metrics["gbpo/ratio/mean"] == pytest.approx(rho.mean().item(), rel=1e-4)
    assert metrics["gbpo/ratio/min"] == pytest.approx(math.exp(-0.6), rel=1e-4)
    assert metrics["gbpo/ratio/max"] == pytest.approx(math.exp(0.5), rel=1e-4)


def test_gbpo_loss_with_kl_and_vllm_importance_sampling(tiny_model_dir, tmp_path):
    # beta > 0 adds beta * k3-KL (bias-corrected by rho, as TRL) to every token; the vLLM importance-sampling ratio
    # multiplies the policy term only. Both enter the same token-mean.
    trainer = make_trainer(GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path, beta=0.1)
    trainer.use_vllm = trainer.vllm_importance_sampling_correction = True  # as if vLLM had sampled the batch
    batch = fake_batch(trainer, seed=3)
    gen = torch.Generator().manual_seed(4)
    batch["ref_per_token_logps"] = batch["old_per_token_logps"] + 0.2 * torch.randn(4, 6, generator=gen)
    batch["importance_sampling_ratio"] = 0.5 + torch.rand(4, 6, generator=gen)
    loss = trainer._compute_loss(trainer.model, batch)

    logps = completion_logps(trainer, batch)
    policy = atv_by_hand(logps, batch)
    ref_minus_logp = batch["ref_per_token_logps"] - logps
    kl = (torch.exp(ref_minus_logp) - ref_minus_logp - 1) * torch.exp(logps - batch["old_per_token_logps"])
    mask = batch["completion_mask"]
    expected = ((policy * batch["importance_sampling_ratio"] + 0.1 * kl) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert trainer._metrics["train"]["kl"][-1] == pytest.approx(((kl * mask).sum() / mask.sum()).item(), rel=1e-4)


def test_gbpo_gradient_accumulation_splits_the_token_mean(tiny_model_dir, tmp_path):
    # Two micro-batches of one accumulation window add up to the token-mean over the whole mini-batch.
    trainer = make_trainer(GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path, gradient_accumulation_steps=2)
    full = fake_batch(trainer, seed=2)
    halves = [{k: (v[i : i + 2] if k != "num_items_in_batch" else v) for k, v in full.items()} for i in (0, 2)]
    trainer.current_gradient_accumulation_steps = 2
    split = sum(trainer._compute_loss(trainer.model, h) for h in halves)
    trainer.current_gradient_accumulation_steps = 1
    trainer.args.gradient_accumulation_steps = trainer.args.steps_per_generation = 1
    whole = trainer._compute_loss(trainer.model, full)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-7)


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


GBPO_KEYS = [
    "gbpo/target_ratio/mean",
    "gbpo/ratio/mean",
    "gbpo/ratio/min",
    "gbpo/ratio/max",
    "gbpo/outside_bounds/region_mean",
    "policy_loss",
    "loss",
]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_iterations": 2, "beta": 0.05, "gradient_accumulation_steps": 2, "max_steps": 3},
        {"target_baseline": "soft_quantile", "epsilon": 0.2, "epsilon_high": 0.28, "entropy_coef": 0.005},
    ],
    ids=["default", "iterations-kl-accumulation", "soft-quantile-entropy"],
)
def test_training_changes_weights_and_logs(tiny_model_dir, tmp_path, overrides):
    trainer = make_trainer(GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path, **overrides)
    before = params(trainer.model)
    trainer.train()
    after = params(trainer.model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) > len(before) // 2
    logs = [entry for entry in trainer.state.log_history if "gbpo/ratio/mean" in entry]
    assert len(logs) == trainer.args.max_steps
    for entry in logs:
        for key in GBPO_KEYS:
            assert math.isfinite(entry[key]), (key, entry)
        assert 0.7 - 1e-6 <= entry["gbpo/target_ratio/mean"] <= 1.3 + 1e-6
        assert entry["gbpo/ratio/min"] <= entry["gbpo/ratio/mean"] <= entry["gbpo/ratio/max"]
    if overrides.get("num_iterations", 1) > 1:
        # later iterations on the same batch see ratios that moved away from 1
        assert any(entry["gbpo/ratio/max"] > 1.0 + 1e-6 or entry["gbpo/ratio/min"] < 1.0 - 1e-6 for entry in logs)
    if overrides.get("beta"):
        assert all(math.isfinite(entry["kl"]) for entry in logs)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"gbpo_temperature": 0.0}, "temperature"),
        ({"target_baseline": "mode"}, "target_baseline"),
        ({"epsilon": 1.5}, "epsilon_low"),
        ({"importance_sampling_level": "sequence", "loss_type": "ppo_br"}, "importance_sampling_level"),
        ({"delta": 2.0}, "delta"),
    ],
)
def test_config_rejects_bad_gbpo_keys(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        GBPOConfig(**common_args(tmp_path, **overrides))


def test_config_defaults_are_the_reference():
    args = GBPOConfig(output_dir="unused", report_to="none", bf16=False, use_cpu=True)
    assert args.loss_type == "gbpo"
    assert (args.epsilon, args.epsilon_high, args.gbpo_temperature) == (0.3, None, 1e-4)  # epsilon_high <- epsilon
    assert (
        GBPOConfig(output_dir="unused", use_cpu=True, loss_type="dapo").epsilon == 0.2
    )  # TRL's default for a TRL loss
    assert (args.target_baseline, args.tv_coef) == ("median", 0.0)


@pytest.mark.parametrize("loss_type", ["gbpo", "dapo"])
def test_vote_n_train_m_removes_the_completions_that_only_vote(tiny_model_dir, tmp_path, loss_type):
    trainer = make_trainer(
        GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path, num_train_generations=3, loss_type=loss_type
    )
    batch = [{"prompt": [{"role": "user", "content": "Count to 3"}]}] * 4
    output = trainer._generate_and_score_completions(batch)
    assert output["completion_ids"].shape[0] == 3  # positions 0, 2, 3 of the group are trained (gbpo.rows)
    completions = trainer.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
    rewards = digit_reward([[{"content": c}] for c in completions])
    advantages, targets = group_stats_by_hand(rewards)  # the 3 trained among themselves
    torch.testing.assert_close(output["advantages"], advantages, rtol=1e-5, atol=1e-5)
    assert torch.all(output["completion_mask"].sum(1) > 0)
    assert output["num_items_in_batch"] == output["completion_mask"].sum()
    if loss_type == "gbpo":
        torch.testing.assert_close(output["target_ratios"], targets, rtol=0, atol=1e-4)
