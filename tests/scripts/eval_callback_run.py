"""Run under `torchrun --nproc_per_node 2`: GBPO training with a `BenchmarkEvalCallback` on a 3-problem benchmark,
so the two processes get unequal shares (2 and 1 problems) that the callback pads to 2 each.

Each rank writes OUT/rank{r}.json: per evaluation the problems it generated for and the number of `generate` calls,
its records, the trainer's log history, and the state checked after an extra evaluation (model mode, RNG, gradient
checkpointing settings, the trainer's eval_strategy).
"""

import json
import random
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

import gbpo.evaluation.callback as callback_module
import gbpo.evaluation.generation as generation
from gbpo import GBPOConfig, GBPOTrainer
from gbpo.evaluation.callback import BenchmarkEvalCallback
from gbpo.rewards import MajorityVoteReward

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny.py
from tiny import CPU_RUN  # noqa: E402

out_dir, model_dir = Path(sys.argv[1]), sys.argv[2]
record = {"generations": [], "records": []}

original_generate = generation._generate_transformers


def counting_generate(model, tokenizer, prompts, **kwargs):
    calls = []
    model_generate = model.generate
    model.generate = lambda *a, **k: calls.append(1) or model_generate(*a, **k)
    try:
        return original_generate(model, tokenizer, prompts, **kwargs)
    finally:
        del model.generate
        record["generations"].append({"prompts": prompts, "generate_calls": len(calls)})


generation._generate_transformers = counting_generate
original_evaluate = callback_module.evaluate_benchmarks


def recording_evaluate(*args, **kwargs):
    result = original_evaluate(*args, **kwargs)
    record["records"].append(result["benchmarks"]["sums"]["records"])
    return result


callback_module.evaluate_benchmarks = recording_evaluate

args = GBPOConfig(
    output_dir=str(out_dir / "run"),
    per_device_train_batch_size=2,
    num_generations=4,
    max_completion_length=8,
    max_steps=2,
    learning_rate=1e-2,
    eval_steps=1,  # the callback's schedule; eval_strategy stays "no"
    gradient_checkpointing=True,
    gradient_checkpointing_kwargs={"use_reentrant": False},
    **CPU_RUN,
)
train = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Sum {i} and {i + 1}"}]} for i in range(8)])
benchmark = Dataset.from_list(
    [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i)} for i in range(3)]
)
trainer = GBPOTrainer(
    model=AutoModelForCausalLM.from_pretrained(model_dir),
    reward_funcs=MajorityVoteReward(num_generations=4, fallback_last_number=True),
    args=args,
    train_dataset=train,
    processing_class=AutoTokenizer.from_pretrained(model_dir),
)
callback = BenchmarkEvalCallback(
    trainer, {"sums": benchmark}, num_samples=2, max_new_tokens=6, fallback_last_number=True, batch_size=2
)
trainer.add_callback(callback)
trainer.train()

# one more evaluation by hand, in training mode: what it leaves behind
trainer.model.train()
random.seed(1)
torch_state, python_state = torch.get_rng_state(), random.getstate()
extra = callback.evaluate()
unwrapped = trainer.accelerator.unwrap_model(trainer.model)
layer = unwrapped.model.layers[0]
record["after"] = {
    "extra_metrics": extra,
    "training": trainer.model.training and all(m.training for m in unwrapped.modules()),
    "torch_rng_restored": torch.equal(torch.get_rng_state(), torch_state),
    "python_rng_restored": random.getstate() == python_state,
    "gradient_checkpointing": unwrapped.is_gradient_checkpointing,
    "use_reentrant": layer._gradient_checkpointing_func.keywords.get("use_reentrant"),
    "eval_strategy": str(trainer.args.eval_strategy),
}
state = PartialState()
record["num_processes"] = state.num_processes
record["log_history"] = trainer.state.log_history
(out_dir / f"rank{state.process_index}.json").write_text(json.dumps(record, default=str))
