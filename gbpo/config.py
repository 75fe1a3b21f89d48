"""`GBPOConfig`: TRL's `GRPOConfig` with GBPO's loss as the default and its keys."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from trl import GRPOConfig

from .grading.extraction import ANSWER_EXTRACTION
from .loss import TARGET_BASELINES, _check_epsilons, _check_temperature
from .vllm_cpu import VLLM_DTYPES

__all__ = ["GBPOConfig"]

# GBPO's bound (reference implementation, paper 5.3 / A.9); TRL's own default applies to every TRL loss type.
GBPO_EPSILON = 0.3
TRL_EPSILON = next(f.default for f in fields(GRPOConfig) if f.name == "epsilon")

# Loss types computed by GBPOTrainer itself (token mean over the mini-batch, as GBPO); every other one is TRL's.
OWN_LOSSES = ("gbpo", "r2vpo", "ppo_br")
# The loss types TRL 1.16's GRPOTrainer computes (`_compute_loss`; any other one fails there, after the model, vLLM
# and the first generation). tests/test_config_choices.py checks this list against the installed TRL's source.
TRL_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
# Every GRPOConfig key with a fixed set of values and the values TRL 1.16 accepts (TRL checks some only when the first
# batch is scored or the first loss computed; GBPOConfig checks all of them at construction, before anything loads).
# scale_rewards is checked after TRL's own mapping of True/False to "group"/"none".
CHOICES = {
    "loss_type": (*OWN_LOSSES, *TRL_LOSS_TYPES),
    "scale_rewards": ("group", "batch", "none"),
    "importance_sampling_level": ("token", "sequence"),
    "vllm_mode": ("colocate", "server"),
    "multi_objective_aggregation": ("sum_then_normalize", "normalize_then_sum"),
    "vllm_importance_sampling_mode": ("sequence_mask", "sequence_truncate", "token_mask", "token_truncate"),
}


@dataclass
class GBPOConfig(GRPOConfig):
    r"""Configuration of [`GBPOTrainer`]: every [`trl.GRPOConfig`] key, plus GBPO's.

    Only the policy loss changes ("Bounded Ratio Reinforcement Learning", arXiv 2604.18578, section 4.5; the maths
    in docs/algorithm.md): with `loss_type="gbpo"` (the default) GRPO's clipped token loss becomes the
    advantage-weighted total variation `|A| * |rho - r*|` to the target ratio
    `r* = 1 - epsilon + (epsilon + epsilon_high) * sigmoid(T / tau)`, `T` the median-centred target advantage and
    `tau = gbpo_temperature`. Every TRL loss type (`"grpo"`, `"dapo"`, `"bnpo"`, `"dr_grpo"`, ...) stays selectable on
    the same trainer, so GBPO and GRPO runs share one code path; with a TRL loss type every key left at its default has
    `GRPOConfig`'s default (GBPO's defaults, such as `epsilon=0.3`, apply to `loss_type="gbpo"` only).

    TRL's names are kept: `epsilon` is the lower bound `eps_low` (target ratio `1 - epsilon` below the threshold) and
    `epsilon_high` the upper bound; `num_iterations` is the number of PPO epochs over each generation batch.

    Parameters:
        loss_type (`str`, defaults to `"gbpo"`):
            `"gbpo"`, `"r2vpo"`, `"ppo_br"` (the two other trust-region replacements, below) or any TRL loss type.
            These three aggregate as the GBPO reference implementation: the token-mean over the whole mini-batch
            (sum of token losses over every process and accumulation step / number of tokens).
        epsilon (`float`, *optional*):
            `eps_low`, in (0, 1] for GBPO; 1 is the cross-entropy-method limit (paper 4.6, docs/algorithm.md). `None`
            (default) resolves at construction to 0.3 (the GBPO reference) with `loss_type="gbpo"` and to TRL's
            default 0.2 with any other loss type; a value set by the user is kept.
        epsilon_high (`float`, *optional*):
            `eps_high` > 0; `None` (default) takes the value of `epsilon`, as in TRL, so both GBPO bounds are 0.3 as in
            the reference.
        gbpo_temperature (`float`, defaults to `1e-4`):
            tau of the sigmoid step of the target ratio (Theorem 4.1), in z-score units; the reference value is 1e-4.
        target_baseline (`str`, defaults to `"median"`):
            The threshold that separates pushed-up from pushed-down completions: `"median"` (reference), `"quantile"`
            (the quantile that normalises asymmetric bounds, Cor. 4.7), `"soft_quantile"` (exact normalisation at
            finite tau, Theorem 4.1) or `"mean"` (ablation).
        tv_coef (`float`, defaults to `0.0`):
            Weight of the unweighted total-variation regulariser `tv_coef * |rho - r*|` (eq. 16); 0 in the reference.
        eval_num_samples, eval_temperature, eval_top_p, eval_max_new_tokens, eval_fallback_last_number:
            Sampling of the benchmark evaluation that runs every `eval_steps` when the trainer is given
            `eval_benchmarks` (TTRL validates with 16 samples at temperature 0.6, top_p 0.95); it logs
            `eval/<benchmark>/pass@1` (the mean over the samples) and `eval/<benchmark>/maj@k`.
        eval_answer_extraction (`str`, defaults to `"lenient"`):
            How that evaluation reads a sample's answer, as `python -m gbpo.evaluate --answer-extraction`: `"lenient"`
            also reads unboxed answers ("final answer is", the last math, the last number), `"strict"` only the last
            `\\boxed{}` (what the TTRL reward reads by default).
        vllm_dtype (`str`, defaults to `"auto"`), vllm_enforce_eager (`bool`, *optional*):
            Options of the colocated vLLM engine that TRL does not expose (gbpo/vllm_cpu.py): the generation dtype, and
            whether to skip vLLM's torch.compile warm-up (default: skipped on a CPU build of vLLM).
        vllm_max_prompt_tokens (`int`, *optional*):
            On a CPU build of vLLM the colocated engine's KV cache is sized from the job (gbpo/kv_cache.py): sequences
            at once x (longest prompt + the longer of `max_completion_length` and `eval_max_new_tokens`). This is the
            longest prompt, in tokens; `None` measures it on the training dataset (`gbpo.train` also counts the
            `eval_benchmarks` prompts). A `VLLM_CPU_KVCACHE_SPACE` (GiB) in the environment overrides the sizing.
        num_train_generations (`int`, *optional*):
            Vote-N/train-M (TTRL's 64 votes, 32 trained; TRL has no such option): all `num_generations` completions of
            a prompt are generated and scored (the majority vote sees them all); `num_train_generations` of each group
            are trained on, with advantages computed among themselves, and the others are removed from the training
            batch before the old/reference log-prob passes and the training passes (with vLLM's importance-sampling
            correction, TRL's old log-prob pass runs on the trained rows only). Which ones are trained is fixed
            by their position, not their content: position `j` of a group iff `(j * M) mod N < M` (for 64/32 the even
            positions; `gbpo.rows.trained_mask`). `per_device_train_batch_size` counts generated (voting) rows: each
            micro-batch trains `per_device_train_batch_size * M / N` rows, which must be a whole number so every
            process holds the same rows. `None`: all are trained on. Works with every loss type.
        drop_uninformative_groups (`bool`, defaults to `False`):
            Remove the groups whose trained advantages are all zero (equal rewards: no policy gradient) from the
            training batch. Their KL (`beta`), entropy-bonus (`entropy_coef`) and `tv_coef` terms go with them, and
            the loss's token mean runs over the kept rows only. Every process keeps the same number of rows: the
            largest informative count over the processes, rounded up to a multiple of `steps_per_generation`; a
            process with fewer fills up with rows masked out of every loss term (`gbpo.rows`); TRL's loss types that
            divide by rows (`grpo`, `sapo`, `dr_grpo`, `luspo`) are computed on the kept rows of each micro-batch
            alone, so filler rows are in no loss's denominator.
        max_extra_generation_rounds (`int`, defaults to `0`):
            DAPO's dynamic sampling (arXiv 2503.14476, 3.2), with `drop_uninformative_groups`: while some process has
            fewer informative trained rows than a full batch, generate another round for fresh prompts drawn from
            the training set (seeded by `seed`, the step and the round), at most this many extra rounds; the first
            informative rows fill the batch. 0: no extra rounds.

        Logged (training, with `loss_type="gbpo"` or when rows are dropped; a TRL loss type that trains every row
        logs exactly TRL's metrics): `rows/trained_per_step` (rows in one optimizer step's mini-batch, all processes),
        `rows/with_gradient_frac` (share of those rows with a nonzero advantage), `rows/groups_dropped` (groups of
        the generation batch, all rounds, left out as uninformative) and `rows/extra_generation_rounds`. TRL's
        `reward*`, `rewards/*` and `frac_reward_zero_std` describe every generated completion (all `num_generations`
        votes, every round), not only the trained ones; `completions/*` likewise.
        r2vpo_delta (`float`, defaults to `0.01`), r2vpo_lambda_init (`float`, defaults to `1.0`), r2vpo_eta
        (`float`, defaults to `10.0`):
            `loss_type="r2vpo"` (arXiv 2601.03320; docs/algorithm.md): per token `-rho * A + lambda * (rho - 1)^2`,
            token mean as GBPO; after each optimizer step `lambda <- max(0, lambda + eta * (v - delta))`, `v` the
            step's token mean of `(rho - 1)^2`. `delta` is the variance target (0.01: a ratio std of about 0.1),
            `eta = 0` keeps a fixed penalty. Logged: `r2vpo/lambda`, `r2vpo/ratio_variance`.
        ppo_br_lambda_1 (`float`, defaults to `0.5`), ppo_br_lambda_2 (`float`, defaults to `0.3`),
        ppo_br_epsilon_min (`float`, defaults to `0.1`), ppo_br_epsilon_max (`float`, defaults to `0.4`),
        ppo_br_reward_window (`int`, defaults to `10`):
            `loss_type="ppo_br"` (arXiv 2505.17714; docs/algorithm.md): PPO's clipped loss (token mean) with the clip
            range `eps_t = clamp(epsilon * (1 + lambda_1 tanh(phi) - lambda_2 tanh(psi)), epsilon_min, epsilon_max)`
            set after each optimizer step for the next one: `phi = H_t / H_ref` (mean token entropy over the first
            step's), `psi` the relative rise of the mean reward over the last `ppo_br_reward_window` generation
            batches against the window before, clipped to [0, 1] (each batch's mean reward over the rows it trains
            enters once, however many optimizer steps train on it; the window is saved in checkpoints). `epsilon`
            is `eps_0` (TRL's 0.2 by default). Logged: `ppo_br/epsilon`, `ppo_br/phi`, `ppo_br/psi`.

    Raises:
        ValueError: at construction, before any model or engine loads, naming the key and what to set instead:
            a key with a fixed set of values (`loss_type`, `scale_rewards`, `importance_sampling_level`, `vllm_mode`,
            `multi_objective_aggregation`, `vllm_importance_sampling_mode`) set to a value TRL 1.16 does not accept
            (the error lists the accepted ones); a GBPO key out of range; with GBPO's, R2VPO's or PPO-BR's loss:
            `delta` (two-sided clipping: these losses already act on a ratio past its bound),
            `importance_sampling_level="sequence"` with R2VPO or PPO-BR (their state is per token), and
            `gradient_accumulation_steps` not dividing `steps_per_generation * num_iterations` (an optimizer step
            spanning two generation batches would need the token count of a batch not generated yet for its exact
            token mean; TRL's `dapo` normalises by each generation batch instead, which is not that mean).
    """

    loss_type: str = field(
        default="gbpo",
        metadata={
            "help": "'gbpo' (default), 'r2vpo', 'ppo_br', or any TRL GRPO loss type ('grpo', 'dapo', 'bnpo', "
            "'dr_grpo', ...)."
        },
    )
    epsilon: float | None = field(
        default=None,
        metadata={
            "help": "Lower bound: eps_low of GBPO's target ratio (1 - epsilon, in (0, 1]) or TRL's clip epsilon. None "
            f"(default): {GBPO_EPSILON} (GBPO reference) with loss_type 'gbpo', TRL's {TRL_EPSILON} otherwise."
        },
    )
    epsilon_high: float | None = field(
        default=None,
        metadata={
            "help": "Upper bound eps_high of the target ratio (1 + epsilon_high); None (default) takes `epsilon`, "
            "as in TRL, so both GBPO bounds are 0.3 as in the GBPO reference."
        },
    )
    gbpo_temperature: float = field(
        default=1e-4,
        metadata={"help": "Temperature tau of the target ratio's sigmoid step (Theorem 4.1). Reference: 1e-4."},
    )
    target_baseline: str = field(
        default="median",
        metadata={
            "help": "Threshold of the target ratio: 'median' (reference), 'quantile' (asymmetric bounds), "
            "'soft_quantile' (exact normalisation at finite temperature) or 'mean' (ablation)."
        },
    )
    tv_coef: float = field(
        default=0.0,
        metadata={"help": "Weight of the unweighted total-variation regulariser tv_coef * |rho - r*| (eq. 16)."},
    )

    num_train_generations: int | None = field(
        default=None,
        metadata={
            "help": "Vote-N/train-M (TTRL: 64 votes, 32 trained): of the num_generations completions of a prompt, all "
            "vote and num_train_generations evenly spaced ones are trained on (gbpo.rows). None (default): all of them."
        },
    )

    drop_uninformative_groups: bool = field(
        default=False,
        metadata={"help": "Remove groups whose trained advantages are all zero (no policy gradient) from training."},
    )
    max_extra_generation_rounds: int = field(
        default=0,
        metadata={
            "help": "DAPO dynamic sampling (needs drop_uninformative_groups): up to this many extra generation rounds "
            "on fresh prompts until the batch holds enough informative groups. 0: none."
        },
    )

    eval_num_samples: int = field(
        default=4,
        metadata={"help": "Benchmark evaluation during training: samples per problem (pass@1 = avg@k, maj@k)."},
    )
    eval_temperature: float = field(
        default=0.6, metadata={"help": "Benchmark evaluation during training: sampling temperature (TTRL: 0.6)."}
    )
    eval_top_p: float = field(
        default=0.95, metadata={"help": "Benchmark evaluation during training: nucleus top_p (TTRL: 0.95)."}
    )
    eval_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Benchmark evaluation during training: new tokens per sample; None: max_completion_length."},
    )

    eval_fallback_last_number: bool = field(
        default=False,
        metadata={"help": "Benchmark evaluation during training: an unboxed sample answers with its last number."},
    )
    eval_answer_extraction: str = field(
        default="lenient",
        metadata={
            "help": "Benchmark evaluation during training: 'lenient' (default, as gbpo.evaluate: also unboxed answers) "
            "or 'strict' (the last \\boxed{} only).",
            "choices": ["strict", "lenient"],
        },
    )

    r2vpo_delta: float = field(
        default=0.01, metadata={"help": "R2VPO: target of the ratio variance mean (rho - 1)^2 (> 0)."}
    )
    r2vpo_lambda_init: float = field(default=1.0, metadata={"help": "R2VPO: initial Lagrange multiplier (>= 0)."})
    r2vpo_eta: float = field(
        default=10.0, metadata={"help": "R2VPO: dual step size (>= 0; 0 keeps lambda fixed at r2vpo_lambda_init)."}
    )
    ppo_br_lambda_1: float = field(default=0.5, metadata={"help": "PPO-BR: weight of the entropy term (>= 0)."})
    ppo_br_lambda_2: float = field(default=0.3, metadata={"help": "PPO-BR: weight of the reward term (>= 0)."})
    ppo_br_epsilon_min: float = field(default=0.1, metadata={"help": "PPO-BR: smallest clip range (> 0)."})
    ppo_br_epsilon_max: float = field(default=0.4, metadata={"help": "PPO-BR: largest clip range (<= 1)."})
    ppo_br_reward_window: int = field(
        default=10, metadata={"help": "PPO-BR: generation batches per window of the reward trend (>= 1)."}
    )

    vllm_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the colocated vLLM engine: 'auto' (vLLM's choice: bf16 for an fp32 model on a CPU), "
            "'float32', 'bfloat16' or 'float16'. The trained model keeps its own dtype."
        },
    )
    vllm_enforce_eager: bool | None = field(
        default=None,
        metadata={
            "help": "Skip vLLM's torch.compile warm-up in the colocated engine. None: True on a CPU build of vLLM "
            "(minutes of warm-up for no measured gain), vLLM's default on a GPU."
        },
    )

    vllm_max_prompt_tokens: int | None = field(
        default=None,
        metadata={
            "help": "CPU build of vLLM: the longest prompt, in tokens, the colocated engine's KV cache is sized for "
            "(with max_completion_length/eval_max_new_tokens and the sequences at once). None: measured on the "
            "training prompts (and gbpo.train's eval_benchmarks)."
        },
    )

    def __post_init__(self):
        if self.eval_answer_extraction not in ANSWER_EXTRACTION:
            raise ValueError(
                f"eval_answer_extraction must be one of {ANSWER_EXTRACTION}, got {self.eval_answer_extraction!r}."
            )
        if self.loss_type not in CHOICES["loss_type"]:  # first: the epsilon default depends on it
            self._check_choice("loss_type")
        if self.epsilon is None:
            self.epsilon = GBPO_EPSILON if self.loss_type == "gbpo" else TRL_EPSILON
        super().__post_init__()
        for key in CHOICES:
            self._check_choice(key)
        if self.vllm_dtype not in VLLM_DTYPES:
            raise ValueError(f"vllm_dtype must be one of {VLLM_DTYPES}, got {self.vllm_dtype!r}.")
        if self.vllm_max_prompt_tokens is not None and self.vllm_max_prompt_tokens < 1:
            raise ValueError(f"vllm_max_prompt_tokens must be >= 1 or None, got {self.vllm_max_prompt_tokens!r}.")
        self._check_rows()
        if self.loss_type not in OWN_LOSSES:
            return
        self._check_trust_region_keys()
        epsilon_high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        _check_epsilons(self.epsilon, epsilon_high)
        _check_temperature(self.gbpo_temperature)
        if self.target_baseline not in TARGET_BASELINES:
            raise ValueError(f"target_baseline must be one of {TARGET_BASELINES}, got {self.target_baseline!r}.")
        if not self.tv_coef >= 0.0:
            raise ValueError(f"tv_coef must be >= 0, got {self.tv_coef}.")
        if self.delta is not None:
            raise ValueError(
                f"delta={self.delta!r} (two-sided clipping) is not supported with loss_type={self.loss_type!r}: its "
                "loss already pulls a ratio that overshoots its bound back (GBPO, R2VPO) or clips it (PPO-BR), so a "
                "second clip would only remove that gradient. Set delta=None, or pick a TRL loss_type."
            )
        if self.importance_sampling_level == "sequence" and self.loss_type != "gbpo":
            raise ValueError(
                f"importance_sampling_level='sequence' is not supported with loss_type={self.loss_type!r}: its "
                "trust-region state is defined on token ratios. Use 'token', or loss_type='gbpo' (GBPO on the "
                "sequence ratio, docs/algorithm.md)."
            )

    def _check_choice(self, key: str) -> None:
        """Raise ValueError naming ``key``, its value and the values TRL 1.16 (and GBPO) accept, when it is not one."""
        value = getattr(self, key)
        if value not in CHOICES[key]:
            accepted = ", ".join(repr(v) for v in CHOICES[key])
            raise ValueError(f"{key}={value!r} is not one of the accepted values: {accepted}.")

    def _check_rows(self):
        """Vote-N/train-M, group filtering and the exact token-mean normaliser: keys that cannot work together."""
        n, m = self.num_generations, self.num_train_generations
        if m is not None:
            if not 2 <= m <= n:
                raise ValueError(f"num_train_generations must be between 2 and num_generations={n}, got {m}.")
            if m < n and self.multi_objective_aggregation == "normalize_then_sum":
                raise ValueError(
                    "multi_objective_aggregation='normalize_then_sum' is not supported with num_train_generations < "
                    "num_generations (its batch-wide normalisation is not computed over the trained rows): set "
                    "multi_objective_aggregation='sum_then_normalize' or num_train_generations=None."
                )
        if self.max_extra_generation_rounds < 0:
            raise ValueError(f"max_extra_generation_rounds must be >= 0, got {self.max_extra_generation_rounds}.")
        if self.max_extra_generation_rounds > 0 and not self.drop_uninformative_groups:
            raise ValueError(
                "max_extra_generation_rounds > 0 (dynamic sampling) refills dropped groups: set "
                "drop_uninformative_groups=True, or max_extra_generation_rounds=0."
            )
        if (m is not None and m < n) or self.drop_uninformative_groups:
            m = m or n
            if (self.per_device_train_batch_size * m) % n:
                raise ValueError(
                    f"per_device_train_batch_size={self.per_device_train_batch_size} x num_train_generations={m} must "
                    f"be a multiple of num_generations={n}, so every process and micro-batch trains the same number "
                    "of rows: change per_device_train_batch_size or num_train_generations."
                )
        if (
            self.loss_type in OWN_LOSSES
            and (self.steps_per_generation * self.num_iterations) % self.gradient_accumulation_steps
        ):
            raise ValueError(
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} must divide steps_per_generation="
                f"{self.steps_per_generation} x num_iterations={self.num_iterations} with "
                f"loss_type={self.loss_type!r}: the loss is the token mean over each optimizer step's mini-batch, and "
                "a step that spans two generation batches would need the token count of a batch not generated yet. "
                "Change one of these keys."
            )

    def _check_trust_region_keys(self) -> None:
        rules = {  # key: (holds, the rule as said in the error)
            "r2vpo_delta": (self.r2vpo_delta > 0, "> 0"),
            "r2vpo_lambda_init": (self.r2vpo_lambda_init >= 0, ">= 0"),
            "r2vpo_eta": (self.r2vpo_eta >= 0, ">= 0"),
            "ppo_br_lambda_1": (self.ppo_br_lambda_1 >= 0, ">= 0"),
            "ppo_br_lambda_2": (self.ppo_br_lambda_2 >= 0, ">= 0"),
            "ppo_br_epsilon_min": (
                0 < self.ppo_br_epsilon_min <= self.ppo_br_epsilon_max,
                "> 0 and <= ppo_br_epsilon_max",
            ),
            "ppo_br_epsilon_max": (self.ppo_br_epsilon_max <= 1, "<= 1"),
            "ppo_br_reward_window": (self.ppo_br_reward_window >= 1, ">= 1"),
        }
        for key, (holds, rule) in rules.items():
            if not holds:
                raise ValueError(f"{key} must be {rule}, got {getattr(self, key)!r}.")
