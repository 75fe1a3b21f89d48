import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random Qwen2 model with a character-level chat tokenizer."""
    return save_tiny(tmp_path_factory.mktemp("tiny-qwen2"))
