"""Run `gbpo.train` (one process, or under `accelerate launch`) with TRL's vLLM colocate mode and record what the
engine holds.

    python tests/scripts/vllm_run.py OUT_DIR MODEL_DIR RECIPE.yaml [--key value ...]

MODEL_DIR is the model the recipe starts from (its weights are the "start" below).

The real command path (`gbpo.train.main`) trains; a callback keeps a copy of the trained weights after every optimizer
step. After training, each process writes OUT_DIR/rank{r}.json with: the step whose weights TRL last pushed to its
vLLM engine (`_last_loaded_step`), the largest difference between the engine's log-probabilities of a fixed token
sequence and those of the model at that step and at the start, every majority-vote reward call it made (prompts,
completions, rewards), and the logged metrics.
"""

import copy
import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM, TrainerCallback
from vllm import SamplingParams

import gbpo.rewards
import gbpo.trainer
from gbpo.distributed import shutdown_distributed
from gbpo.train import main

out_dir, model_dir, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
record = {"reward_calls": []}
snapshots = {}


class Snapshot(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def _keep(self, step):
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        if hasattr(model, "merge_and_unload"):  # LoRA: the engine holds the merged weights
            model = copy.deepcopy(model).merge_and_unload()
        snapshots[step] = {name: p.detach().clone() for name, p in model.state_dict().items()}

    def on_train_begin(self, args, state, control, **kwargs):
        self._keep(0)

    def on_step_end(self, args, state, control, **kwargs):
        self._keep(state.global_step)


trainer_init = gbpo.trainer.GBPOTrainer.__init__


def init_with_snapshots(self, *args, **kwargs):
    trainer_init(self, *args, **kwargs)
    self.add_callback(Snapshot(self))


gbpo.trainer.GBPOTrainer.__init__ = init_with_snapshots

vote_call = gbpo.rewards.MajorityVoteReward.__call__


def recording_vote(self, prompts, completions, **kwargs):
    rewards = vote_call(self, prompts=prompts, completions=completions, **kwargs)
    record["reward_calls"].append({"prompts": prompts, "completions": completions, "rewards": rewards})
    return rewards


gbpo.rewards.MajorityVoteReward.__call__ = recording_vote

trainer = main(argv)
state = PartialState()
tokenizer = trainer.processing_class
ids = tokenizer("Sum 3 and 4. The answer is \\boxed{7}, since three plus four is seven.")["input_ids"]
llm = trainer.vllm_generation.llm
output = llm.generate(
    [{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0), use_tqdm=False
)
vllm_logps = torch.tensor([output[0].prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))])


def model_logps(weights):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.load_state_dict(weights)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)


synced = trainer._last_loaded_step
record.update(
    num_processes=state.num_processes,
    synced_step=synced,
    global_step=trainer.state.global_step,
    engine_class=type(trainer.vllm_generation).__name__,
    vllm_vs_synced=(vllm_logps - model_logps(snapshots[synced])).abs().max().item(),
    vllm_vs_initial=(vllm_logps - model_logps(snapshots[0])).abs().max().item(),
    log_history=trainer.state.log_history,
)
(out_dir / f"rank{state.process_index}.json").write_text(json.dumps(record))
shutdown_distributed(trainer)  # as `gbpo.train` does before it exits: vLLM's engine, then the groups
