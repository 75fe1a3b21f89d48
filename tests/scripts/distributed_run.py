"""Run under `torchrun --nproc_per_node 2`: GBPO + TTRL training whose vote groups span both ranks, with 4 votes and
2 trained completions per prompt.

Each rank writes what it saw to OUT/rank{r}.json: the local slices of prompts, completions and majority-vote rewards
of every reward call, and the advantages and target ratios of every generation batch. tests/test_distributed.py
puts the slices back together and checks them against a single-process computation.
"""

import json
import sys
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from gbpo import GBPOConfig, GBPOTrainer
from gbpo.distributed import shutdown_distributed
from gbpo.rewards import MajorityVoteReward

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny.py
from tiny import CPU_RUN  # noqa: E402

out_dir, model_dir = Path(sys.argv[1]), sys.argv[2]
record = {"reward_calls": [], "batches": []}


class RecordingVote(MajorityVoteReward):
    def __call__(self, prompts, completions, **kwargs):
        rewards = super().__call__(prompts=prompts, completions=completions, **kwargs)
        record["reward_calls"].append({"prompts": prompts, "completions": completions, "rewards": rewards})
        return rewards


class RecordingTrainer(GBPOTrainer):
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        record["batches"].append(
            {
                "advantages": output["advantages"].tolist(),
                "target_ratios": output["target_ratios"].tolist(),
                "trained": (output["completion_mask"].sum(1) > 0).tolist(),
            }
        )
        return output


args = GBPOConfig(
    output_dir=str(out_dir / "run"),
    per_device_train_batch_size=2,  # 2 x 3 steps = 6 completions per rank: the second group of 4 spans both ranks
    steps_per_generation=3,
    gradient_accumulation_steps=3,
    num_generations=4,
    num_train_generations=2,  # vote-N/train-M: all 4 vote, positions 0 and 2 of each group are trained on
    max_completion_length=16,
    max_steps=2,
    learning_rate=1e-2,
    **CPU_RUN,
)
dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Sum {i} and {i + 1}"}]} for i in range(12)])
trainer = RecordingTrainer(
    model=AutoModelForCausalLM.from_pretrained(model_dir),
    reward_funcs=RecordingVote(num_generations=4, fallback_last_number=True),
    args=args,
    train_dataset=dataset,
    processing_class=AutoTokenizer.from_pretrained(model_dir),
)
trainer.train()
state = PartialState()
record["num_processes"] = state.num_processes
plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
record["zero_stage"] = plugin.zero_stage if plugin is not None else None
(out_dir / f"rank{state.process_index}.json").write_text(json.dumps(record))
shutdown_distributed(trainer)  # as `gbpo.train` does before it exits
