"""Short model ids: names that cannot be a model fail before any hub request; conversion is safe under 2 processes."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gbpo.models import EMBEDDED_MODELS, base_model_id, resolve_model

TESTS = Path(__file__).resolve().parent

# Two processes resolve the same short id at once; the GGUF loading is replaced by a slow tiny model, the saving and
# renaming into the cache are gbpo's own. Each process appends a line to `calls` when it loads (converts).
RESOLVE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import gbpo.models as models
    from tiny import make_model, make_tokenizer

    calls = Path(sys.argv[1])
    def slow_load(gguf):
        with calls.open("a") as f:
            f.write("load\\n")
        time.sleep(2)  # the other process starts while this one converts
        tokenizer = make_tokenizer()
        return make_model(tokenizer), tokenizer

    models._load_gguf = slow_load
    models._gguf_path = lambda entry: Path("unused.gguf")
    print(models.resolve_model("smollm2-135m"))
    """
)


def test_two_processes_convert_a_short_id_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GBPO_CACHE", str(tmp_path / "cache"))
    script = tmp_path / "resolve.py"
    script.write_text(RESOLVE.format(tests=str(TESTS)))
    calls = tmp_path / "calls"
    procs = [
        subprocess.Popen([sys.executable, str(script), str(calls)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()[-3000:]
    paths = {out.decode().strip().splitlines()[-1] for out, _ in results}
    target = tmp_path / "cache" / "smollm2-135m-instruct"
    assert paths == {str(target)}
    assert calls.read_text() == "load\n"  # converted once; the other process waited and used it
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []  # no staging left


def test_missing_path_fails_before_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    for name in ("./nowhere", str(tmp_path / "nowhere"), "a/b/c", "outputs/run1"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            resolve_model(name)


def test_unknown_short_id_lists_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as err:
        resolve_model("smollm2-13m")
    assert "'smollm2-13m'" in str(err.value)
    assert all(name in str(err.value) for name in EMBEDDED_MODELS)


def test_existing_directories_and_hub_ids_pass_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    assert resolve_model("model") == "model"
    assert resolve_model(str(tmp_path / "model")) == str(tmp_path / "model")
    assert resolve_model("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"


def test_base_model_id_of_a_converted_short_id(tmp_path, monkeypatch):
    monkeypatch.setenv("GBPO_CACHE", str(tmp_path))
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_id("smollm2-135m") == base_model_id(str(tmp_path / "smollm2-135m-instruct")) == hub_id
    assert base_model_id("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"
