"""GBPOTrainer on a tiny random Qwen2: GRPO equality, the GBPO loss in the trainer, real training runs."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from gbpo import GBPOConfig, GBPOTrainer
from gbpo.loss import gbpo_advantages, gbpo_per_token_loss, target_ratio


def digit_reward(completions, **kwargs):
    """A continuous reward: the share of digits in the completion (varies within every group)."""
    return [sum(ch.isdigit() for ch in c[0]["content"]) / max(len(c[0]["content"]), 1) for c in completions]


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
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=True,
        seed=0,
        temperature=1.0,
    )
    kw.update(overrides)
    return kw


def load(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def make_trainer(cls, config_cls, tiny_model_dir, tmp_path, **overrides):
    model, tokenizer = load(tiny_model_dir)
    args = config_cls(**common_args(tmp_path, **overrides))
    trainer = cls(
        model=model, reward_funcs=digit_reward, args=args, train_dataset=prompts_dataset(), processing_class=tokenizer
    )
    trainer.model.train()  # as inside `train()`: metrics and the accumulation normaliser are those of training
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps  # set by `train()` otherwise
    return trainer


def fake_batch(trainer, seed=0, batch=4, prompt_len=5, completion_len=6):
    """A batch as `_generate_and_score_completions` returns it, with padding and off-policy old log-probs."""
    gen = torch.Generator().manual_seed(seed)
    vocab = trainer.model.config.vocab_size
    completion_mask = torch.ones(batch, completion_len, dtype=torch.long)
    completion_mask[1, 4:] = 0
    completion_mask[3, 2:] = 0
    rewards = torch.rand(batch, generator=gen)
    advantages, target_advantages = gbpo_advantages(rewards, batch)
    return {
        "prompt_ids": torch.randint(3, vocab, (batch, prompt_len), generator=gen),
        "prompt_mask": torch.ones(batch, prompt_len, dtype=torch.long),
        "completion_ids": torch.randint(3, vocab, (batch, completion_len), generator=gen),
        "completion_mask": completion_mask,
        "advantages": advantages,
        "target_ratios": target_ratio(target_advantages),
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


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo"])
def test_trl_loss_types_equal_grpo_trainer(tiny_model_dir, tmp_path, loss_type):
    gbpo = make_trainer(GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path, loss_type=loss_type, epsilon=0.2)
    grpo = make_trainer(GRPOTrainer, GRPOConfig, tiny_model_dir, tmp_path, loss_type=loss_type, epsilon=0.2)
    batch = fake_batch(gbpo)
    batch_grpo = {k: v for k, v in batch.items() if k != "target_ratios"}
    loss_gbpo = gbpo._compute_loss(gbpo.model, batch)
    loss_grpo = grpo._compute_loss(grpo.model, batch_grpo)
    assert loss_gbpo.item() != 0.0
    torch.testing.assert_close(loss_gbpo, loss_grpo, rtol=0, atol=1e-7)


def test_gbpo_loss_in_trainer_is_token_mean_of_the_pure_function(tiny_model_dir, tmp_path):
    trainer = make_trainer(GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path)
    batch = fake_batch(trainer, seed=1)
    loss = trainer._compute_loss(trainer.model, batch)

    logps = completion_logps(trainer, batch)
    per_token = gbpo_per_token_loss(logps, batch["old_per_token_logps"], batch["advantages"], batch["target_ratios"])
    mask = batch["completion_mask"]
    expected = (per_token * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)

    metrics = trainer._metrics["train"]
    rho = torch.exp(logps - batch["old_per_token_logps"])[mask.bool()]
    assert metrics["gbpo/ratio/min"][-1] == pytest.approx(rho.min().item(), rel=1e-4)
    assert metrics["gbpo/ratio/max"][-1] == pytest.approx(rho.max().item(), rel=1e-4)
    outside = ((rho < 0.7) | (rho > 1.3)).float().mean().item()
    assert metrics["clip_ratio/region_mean"][-1] == pytest.approx(outside, abs=1e-6)
    assert metrics["gbpo/target_ratio/mean"][-1] == pytest.approx(batch["target_ratios"].mean().item(), abs=1e-6)


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
    policy = gbpo_per_token_loss(logps, batch["old_per_token_logps"], batch["advantages"], batch["target_ratios"])
    delta = batch["ref_per_token_logps"] - logps
    kl = (torch.exp(delta) - delta - 1) * torch.exp(logps - batch["old_per_token_logps"])
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
    "clip_ratio/region_mean",
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


def test_target_ratios_come_from_the_groups_rewards(tiny_model_dir, tmp_path):
    trainer = make_trainer(GBPOTrainer, GBPOConfig, tiny_model_dir, tmp_path)
    trainer.model.train()
    batch = [{"prompt": [{"role": "user", "content": "Count to 3"}]}] * 4
    output = trainer._generate_and_score_completions(batch)
    completions = trainer.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
    rewards = torch.tensor(digit_reward([[{"content": c}] for c in completions]))
    advantages, target_advantages = gbpo_advantages(rewards, 4)
    torch.testing.assert_close(output["advantages"], advantages, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output["target_ratios"], target_ratio(target_advantages), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"gbpo_temperature": 0.0}, "temperature"),
        ({"target_baseline": "mode"}, "target_baseline"),
        ({"epsilon": 1.5}, "epsilon_low"),
        ({"importance_sampling_level": "sequence"}, "importance_sampling_level"),
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
    rewards = torch.tensor(digit_reward([[{"content": c}] for c in completions]))
    advantages, target_advantages = gbpo_advantages(rewards, 3)
    torch.testing.assert_close(output["advantages"], advantages, rtol=1e-5, atol=1e-6)
    assert output["num_items_in_batch"] == output["completion_mask"].sum()
    if loss_type == "gbpo":
        torch.testing.assert_close(output["target_ratios"], target_ratio(target_advantages), rtol=1e-5, atol=1e-6)
