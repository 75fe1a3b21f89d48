"""The places where gbpo treats vLLM's CUDA and CPU builds differently, each branch run with stand-ins for vLLM.

No engine starts here (tests/test_vllm.py runs the real CPU engine; no GPU engine runs in this project's CI). What
differs, and what each test pins down:

- which build is installed: `vllm.platforms.current_platform.is_cpu()` (`vllm_platform_is_cpu`);
- the colocated weight sync: on a GPU build TRL's own `VLLMGeneration.sync_weights` pushes each parameter with
  `llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights`; on a CPU build
  `CPUColocateVLLMGeneration.sync_weights` goes through `llm.collective_rpc("reload_weights", ...)` and repacks a tied
  output layer (`llm.apply_model`); server mode is TRL's on both;
- the engine options and environment the trainer sets up (`GBPOTrainer.__init__`): eager mode and the CPU
  environment on a CPU build only;
- the evaluation's sampling seed: per request on a GPU build, a seeded torch RNG on a CPU build (which rejects
  per-request seeds with top-p).
"""

import os
import sys
import types
from importlib.metadata import requires
from pathlib import Path
from types import SimpleNamespace

import pytest
import tomllib
import torch
from packaging.requirements import Requirement
from trl.generation import vllm_generation as trl_vllm
from trl.generation.vllm_generation import VLLMGeneration

import gbpo.trainer
from gbpo.config import GBPOConfig
from gbpo.evaluation.generation import _generate_vllm
from gbpo.vllm_cpu import (
    CPUColocateVLLMGeneration,
    adapt_vllm_generation,
    repack_tied_lm_head,
    vllm_platform_is_cpu,
)


def test_vllm_extra_is_the_range_trl_supports():
    """The `vllm` extra is TRL 1.16's own `trl[vllm]` range (0.22.0-0.31.0): pip cannot pick a newer vLLM whose
    internals TRL's colocated weight sync has not been written for."""
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    [ours] = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["vllm"]]
    [trls] = [Requirement(r) for r in requires("trl") if r.startswith("vllm") and 'extra == "vllm"' in r]
    assert ours.name == trls.name == "vllm"
    assert ours.specifier == trls.specifier
    assert {v for v in ("0.21.9", "0.22.0", "0.31.0", "0.31.1", "0.32.0") if v in ours.specifier} == {
        "0.22.0",
        "0.31.0",
    }


def fake_platform(monkeypatch, is_cpu: bool):
    """Install a stand-in ``vllm.platforms`` whose ``current_platform.is_cpu()`` answers ``is_cpu``."""
    module = types.ModuleType("vllm.platforms")
    module.current_platform = SimpleNamespace(is_cpu=lambda: is_cpu)
    monkeypatch.setitem(sys.modules, "vllm.platforms", module)


class FakeLLM:
    """The parts of `vllm.LLM` the two weight syncs touch, recording every call."""

    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.loaded, self.rpc, self.applied, self.resets = [], [], [], 0
        model = SimpleNamespace(load_weights=lambda weights: self.loaded.extend(weights))
        runner = SimpleNamespace(model=model)
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))
        )

    def collective_rpc(self, method, kwargs=None):
        kwargs = dict(kwargs or {})
        kwargs["weights_iterator"] = list(kwargs.get("weights_iterator", ()))  # a worker consumes it
        self.rpc.append((method, kwargs))

    def apply_model(self, fn):
        self.applied.append(fn)

    def reset_prefix_cache(self):
        self.resets += 1


PARAMS = [("model.embed_tokens.weight", torch.arange(6.0).reshape(3, 2)), ("model.norm.weight", torch.ones(2))]


def stand_in_generation(mode="colocate"):
    """TRL's `VLLMGeneration` without `__init__` (which would start an engine): the attributes `sync_weights` reads."""
    generation = VLLMGeneration.__new__(VLLMGeneration)
    generation.mode = mode
    generation.enable_sleep_mode = False
    generation.accelerator = SimpleNamespace(is_main_process=True)
    generation.llm = FakeLLM()
    generation._weight_metadata = None
    generation._iter_named_params = lambda: iter(PARAMS)
    return generation


@pytest.mark.parametrize("is_cpu", [True, False])
def test_platform_answers_which_build_is_installed(monkeypatch, is_cpu):
    fake_platform(monkeypatch, is_cpu)
    assert vllm_platform_is_cpu() is is_cpu


def test_no_vllm_is_not_a_cpu_build(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm.platforms", None)  # `from vllm.platforms import ...` raises ImportError
    assert vllm_platform_is_cpu() is False


def test_gpu_build_keeps_trl_weight_sync_through_load_weights(monkeypatch):
    fake_platform(monkeypatch, is_cpu=False)
    generation = stand_in_generation()
    assert adapt_vllm_generation(generation) is generation and type(generation) is VLLMGeneration
    generation.sync_weights()
    llm = generation.llm
    # one load_weights call per parameter, with the trained tensors themselves (no copy), then one cache reset
    assert [name for name, _ in llm.loaded] == [name for name, _ in PARAMS]
    assert all(sent is param for (_, sent), (_, param) in zip(llm.loaded, PARAMS, strict=True))
    assert (llm.rpc, llm.applied, llm.resets) == ([], [], 1)


def test_cpu_build_syncs_through_reload_weights_and_repacks_the_tied_head(monkeypatch):
    fake_platform(monkeypatch, is_cpu=True)
    generation = stand_in_generation()
    assert adapt_vllm_generation(generation) is generation and type(generation) is CPUColocateVLLMGeneration
    generation.sync_weights()
    llm = generation.llm
    assert llm.loaded == []  # TRL's load_weights would write into tensors the CPU kernels no longer read
    [(method, kwargs)] = llm.rpc
    assert method == "reload_weights" and kwargs["is_checkpoint_format"] is True
    sent = kwargs["weights_iterator"]
    assert [name for name, _ in sent] == [name for name, _ in PARAMS]
    for (_, copy), (_, param) in zip(sent, PARAMS, strict=True):
        assert torch.equal(copy, param) and copy.data_ptr() != param.data_ptr()  # clones: ZeRO-3 frees the original
    assert llm.applied == [repack_tied_lm_head] and llm.resets == 1


@pytest.mark.parametrize("is_cpu", [True, False])
def test_server_mode_is_trl_weight_sync_on_either_build(monkeypatch, is_cpu):
    fake_platform(monkeypatch, is_cpu)
    generation = stand_in_generation(mode="server")
    sent = []
    generation.vllm_client = SimpleNamespace(
        update_named_params=lambda metadata, params: sent.append((metadata, [name for name, _ in params])),
        reset_prefix_cache=lambda: sent.append("reset"),
    )
    adapt_vllm_generation(generation)
    generation.sync_weights()
    names = [name for name, _ in PARAMS]
    assert sent == [([(names[0], "float32", [3, 2]), (names[1], "float32", [2])], names), "reset"]
    assert (generation.llm.loaded, generation.llm.rpc) == ([], [])


def test_an_already_adapted_engine_is_left_alone(monkeypatch):
    fake_platform(monkeypatch, is_cpu=True)

    class Custom(VLLMGeneration):
        pass

    generation = stand_in_generation()
    generation.__class__ = Custom
    assert type(adapt_vllm_generation(generation)) is Custom


@pytest.fixture
def restore_environ():
    saved = dict(os.environ)  # TRL's colocate setup writes RANK, WORLD_SIZE, MASTER_ADDR/PORT
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("is_cpu", [True, False])
def test_trainer_sets_up_the_engine_for_the_build(monkeypatch, tmp_path, tiny_model_dir, is_cpu, restore_environ):
    """`GBPOTrainer.__init__` with TRL's engine replaced by `FakeLLM`: a CPU build gets eager mode, the CPU
    environment and the reload-based weight sync; a GPU build gets vLLM's own defaults and TRL's weight sync."""
    fake_platform(monkeypatch, is_cpu)
    monkeypatch.setattr(trl_vllm, "is_vllm_available", lambda *a, **k: True)  # also where vLLM is not installed
    monkeypatch.setattr(trl_vllm, "LLM", FakeLLM)
    cpu_environment = []
    monkeypatch.setattr(gbpo.trainer, "configure_cpu_environment", lambda: cpu_environment.append(True))
    args = GBPOConfig(
        output_dir=str(tmp_path),
        use_vllm=True,
        vllm_mode="colocate",
        num_generations=2,
        per_device_train_batch_size=2,
        max_completion_length=4,
        report_to="none",
        use_cpu=True,
        bf16=False,
    )
    from datasets import Dataset

    data = Dataset.from_dict({"prompt": ["1+1=", "2+2="]})
    trainer = gbpo.trainer.GBPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=data,
    )
    llm = trainer.vllm_generation.llm
    assert isinstance(llm, FakeLLM) and llm.init_kwargs["model"] == str(tiny_model_dir)
    assert "dtype" not in llm.init_kwargs  # vllm_dtype "auto": vLLM's own choice on both builds
    if is_cpu:
        assert type(trainer.vllm_generation) is CPUColocateVLLMGeneration
        assert llm.init_kwargs["enforce_eager"] is True and cpu_environment == [True]
    else:
        assert type(trainer.vllm_generation) is VLLMGeneration
        assert "enforce_eager" not in llm.init_kwargs and cpu_environment == []


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeGenerateLLM:
    """`vllm.LLM.generate` answering each prompt with one output per sample, each text a torch random draw."""

    def __init__(self):
        self.params = None

    def generate(self, prompts, params, use_tqdm=False):
        self.params = params
        n = params.kwargs["n"]
        return [
            SimpleNamespace(
                outputs=[
                    SimpleNamespace(text=f"{torch.rand(1).item():.6f}", token_ids=[1, 2], finish_reason="stop")
                    for _ in range(n)
                ]
            )
            for _ in prompts
        ]


@pytest.mark.parametrize("is_cpu", [True, False])
def test_evaluation_seeds_requests_on_a_gpu_build_and_the_torch_rng_on_a_cpu_build(monkeypatch, is_cpu):
    fake_platform(monkeypatch, is_cpu)
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=FakeSamplingParams))
    tokenizer = lambda text, add_special_tokens: {"input_ids": [ord(c) for c in text]}  # noqa: E731
    kwargs = dict(num_samples=3, temperature=0.6, top_p=0.95, max_new_tokens=5, seed=7, progress=False)
    llm = FakeGenerateLLM()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = _generate_vllm(llm, tokenizer, ["a", "b"], **kwargs)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left as it was
    second = _generate_vllm(FakeGenerateLLM(), tokenizer, ["a", "b"], **kwargs)
    assert llm.params.kwargs == dict(n=3, temperature=0.6, top_p=0.95, max_tokens=5, seed=None if is_cpu else 7)
    assert [len(s) for s in first] == [3, 3] and first[0][0][1:] == (2, False)
    assert first == second  # the same seed gives the same samples on both builds (here: the forked torch RNG)
