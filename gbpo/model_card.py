"""The model card a GBPO run writes (``README.md`` in ``output_dir``): base model, method, papers, recipe.

TRL's ``create_model_card`` names the base model only when it is a hub id (a local directory gives "fine-tuned
version of [None]") and has one method with one paper. :class:`ModelCardMixin` writes instead: the base model (for
a short id of `gbpo.models`, the hub model its file is a copy of; a local directory by name, without a hub link),
the method with its paper from the trainer's ``_name``/``_paper`` class attributes, test-time RL (TTRL) and its paper
when the ``majority_vote`` reward is used, and the recipe: the keys the user set (``model_card_recipe``, set by
`gbpo.train`) or, from the API, the main keys of ``args``.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData
from trl.trainer.utils import get_config_model_id

from .models import base_model_id

__all__ = ["TTRL_PAPER", "ModelCardMixin"]

TTRL_PAPER = {
    "title": "TTRL: Test-Time Reinforcement Learning",
    "id": "2504.16084",
    "citation": """@misc{ttrl2025,
    title         = {{TTRL: Test-Time Reinforcement Learning}},
    year          = 2025,
    eprint        = {2504.16084},
    archivePrefix = {arXiv},
}""",
}

ARGS_IN_CARD = (
    "loss_type", "epsilon", "epsilon_high", "gbpo_temperature", "target_baseline", "num_generations",
    "num_train_generations", "num_iterations", "steps_per_generation", "per_device_train_batch_size",
    "gradient_accumulation_steps", "learning_rate", "beta", "temperature", "max_completion_length", "max_steps", "seed",
)  # fmt: skip

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

This model is a fine-tuned version of {{ base_model }}{% if dataset_name %}, trained on `{{ dataset_name }}`{% endif %}.
It was trained with {{ trainer_name }}, from [{{ paper_title }}](https://arxiv.org/abs/{{ paper_id }}) \
(arXiv {{ paper_id }}), with the `gbpo` package on top of [TRL](https://github.com/huggingface/trl)'s \
GRPOTrainer{% if ttrl %}, as test-time reinforcement learning: the reward is the majority vote of each group of \
samples, no gold answers ([TTRL](https://arxiv.org/abs/{{ ttrl_id }}), arXiv {{ ttrl_id }}){% endif %}.

Reward functions: {{ rewards }}.

## Recipe

```yaml
{{ recipe }}```

### Framework versions

- TRL: {{ trl_version }}
- Transformers: {{ transformers_version }}
- Pytorch: {{ pytorch_version }}

## Citations

```bibtex
{{ citations }}
```
"""


class ModelCardMixin:
    """``create_model_card`` for a `trl.GRPOTrainer` subclass: base model, GBPO and its paper, TTRL, the recipe.

    Attributes read: ``_name`` and ``_paper`` (``{"title", "id", "citation"}``) of the trainer class,
    ``model_card_base_model`` (the name the user gave, else the model's config id), ``model_card_recipe`` (a mapping of
    the keys the run was given; else the main keys of ``args``) and ``reward_func_names``.
    """

    model_card_base_model: str | None = None
    model_card_recipe: dict | None = None

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        from importlib.metadata import version

        if not self.is_world_process_zero():
            return
        base = base_model_id(self.model_card_base_model or get_config_model_id(self.model.config) or "unknown")
        base_model_link = not os.path.exists(base) and base.count("/") == 1  # a hub id
        ttrl = "majority_vote" in self.reward_func_names
        recipe = self.model_card_recipe
        if recipe is None:
            recipe = {key: getattr(self.args, key) for key in ARGS_IN_CARD if hasattr(self.args, key)}
        tags = {tags} if isinstance(tags, str) else set(tags or [])
        tags.update(self._tag_names)
        if ttrl:
            tags.add("ttrl")
        citations = [self._paper["citation"]] + ([TTRL_PAPER["citation"]] if ttrl else [])
        card = ModelCard.from_template(
            ModelCardData(
                base_model=base if base_model_link else None,
                library_name="transformers",
                model_name=model_name or Path(self.args.output_dir).name,
                tags=sorted(tags),
            ),
            template_str=TEMPLATE,
            model_name=model_name or Path(self.args.output_dir).name,
            base_model=f"[{base}](https://huggingface.co/{base})" if base_model_link else f"`{base}`",
            dataset_name=dataset_name,
            trainer_name=self._name,
            paper_title=self._paper["title"],
            paper_id=self._paper["id"],
            ttrl=ttrl,
            ttrl_id=TTRL_PAPER["id"],
            rewards=", ".join(f"`{name}`" for name in self.reward_func_names),
            recipe=yaml.safe_dump(dict(recipe), sort_keys=False),
            citations="\n\n".join(citations),
            trl_version=version("trl"),
            transformers_version=version("transformers"),
            pytorch_version=version("torch"),
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))
