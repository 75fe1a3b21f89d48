"""Run under `torchrun --nproc_per_node 2`: informative-group filtering with groups spread unevenly over the ranks.

Each rank writes OUT/rank{r}.json: per generation batch, its rows, how many are in the loss, their advantages and
the prompts of the kept rows; tests/test_rows.py checks that both ranks hold the same number of rows.
"""

import json
import sys
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from gbpo import GBPOConfig, GBPOTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny.py
from tiny import CPU_RUN  # noqa: E402

out_dir, model_dir = Path(sys.argv[1]), sys.argv[2]
record = {"batches": []}


def vote_reward(prompts, completions, **kwargs):
    """0 for the "same" prompts (unanimous groups), a content hash for the "vary" ones."""
    return [
        0.0 if "same" in p[-1]["content"] else float(sum(map(ord, c[-1]["content"])) % 97)
        for p, c in zip(prompts, completions, strict=True)
    ]


class RecordingTrainer(GBPOTrainer):
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        in_loss = output["completion_mask"].sum(1) > 0
        record["batches"].append(
            {
                "rows": output["completion_ids"].shape[0],
                "in_loss": int(in_loss.sum()),
                "advantages": output["advantages"].tolist(),
                "in_loss_rows": in_loss.tolist(),
                "local_prompts": [x["prompt"][-1]["content"] for x in inputs],
            }
        )
        return output


args = GBPOConfig(
    output_dir=str(out_dir / "run"),
    per_device_train_batch_size=4,  # 4 x 2 steps = 8 rows = 2 groups of 4 per rank and generation
    steps_per_generation=2,
    gradient_accumulation_steps=2,
    num_generations=4,
    num_train_generations=2,
    drop_uninformative_groups=True,
    max_completion_length=8,
    max_steps=3,
    learning_rate=1e-2,
    **CPU_RUN,
)
prompts = ["same 1", "vary 1", "same 2", "same 3", "vary 2", "same 4", "same 5", "vary 3"]
dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
trainer = RecordingTrainer(
    model=AutoModelForCausalLM.from_pretrained(model_dir),
    reward_funcs=vote_reward,
    args=args,
    train_dataset=dataset,
    processing_class=AutoTokenizer.from_pretrained(model_dir),
)
trainer.train()
state = PartialState()
record["num_processes"] = state.num_processes
(out_dir / f"rank{state.process_index}.json").write_text(json.dumps(record))
