"""Engine tests need torch (the `engine` extra); without it the whole directory is skipped.

Fixtures build one tiny random-weight Llama per session: the Hugging Face reference model
(transformers, test-only dependency), the same weights saved as an HF directory, and the
engine's model loaded from that directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

collect_ignore_glob = [] if importlib.util.find_spec("torch") else ["test_*.py"]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core box two OpenMP threads
    that wait on each other turn milliseconds into seconds."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_hf_model():
    pytest.importorskip("transformers")
    from tests.engine.tiny import make_tiny_hf_model  # needs transformers: imported only here

    return make_tiny_hf_model(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_hf_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.engine.tiny import save_tiny_hf_dir

    return save_tiny_hf_dir(tiny_hf_model, tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Path):
    from shunter.engine.loader import load_hf_dir

    return load_hf_dir(tiny_model_dir)


@pytest.fixture(scope="session")
def tok_loaded(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random Llama with a real (byte-level BPE) tokenizer and a chat template, loaded
    from the GGUF file llama.cpp would write for it."""
    pytest.importorskip("transformers")
    from shunter.engine.loader import load_gguf
    from tests.engine.gguf_writer import byte_level_vocab, llama_gguf_from_hf
    from tests.engine.tiny import make_tiny_hf_model

    model = make_tiny_hf_model(seed=5, vocab_size=len(byte_level_vocab()[0]))
    return load_gguf(llama_gguf_from_hf(tmp_path_factory.mktemp("tok") / "m.gguf", model))
