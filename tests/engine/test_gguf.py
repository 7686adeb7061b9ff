"""GGUF reading, dequantization, llama.cpp's Q/K permutation and tokenizer, against HF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from shunter.engine.loader import load_gguf, load_model  # noqa: E402
from shunter.engine.loader.gguf import SUPPORTED_GGML_TYPES, read_gguf  # noqa: E402
from shunter.errors import ModelError  # noqa: E402
from tests.engine.gguf_writer import byte_level_vocab, llama_gguf_from_hf, write_gguf  # noqa: E402
from tests.engine.tiny import make_tiny_hf_model, reference_logits  # noqa: E402

VOCAB_SIZE = len(byte_level_vocab()[0])


@pytest.fixture(scope="module")
def vocab_model():
    return make_tiny_hf_model(seed=3, vocab_size=VOCAB_SIZE)


@pytest.mark.parametrize("kind,tolerance", [("F32", 0.0), ("F16", 1e-3), ("Q8_0", 0.01),
                                            ("Q4_1", 0.07), ("Q4_0", 0.1)])
def test_dequantize_roundtrip(tmp_path: Path, kind: str, tolerance: float) -> None:
    x = np.random.default_rng(0).normal(0.0, 0.3, size=(4, 64)).astype(np.float32)
    gguf = read_gguf(write_gguf(tmp_path / "t.gguf", {"general.alignment": 64}, {"w": (x, kind)}))
    y = gguf.read_tensor("w")
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.abs(y - x).max() <= tolerance * np.abs(x).max() + 1e-7


def test_4bit_blocks_follow_the_ggml_layout(tmp_path: Path) -> None:
    # Hand-made blocks per ggml-quants.c: element j in the low nibble of byte j, j+16 in the high.
    qs = bytes(j | ((15 - j) << 4) for j in range(16))
    q4_1 = np.float16(2.0).tobytes() + np.float16(0.5).tobytes() + qs
    q4_0 = np.float16(2.0).tobytes() + qs
    gguf = read_gguf(write_gguf(tmp_path / "t.gguf", {}, {}))
    j = np.arange(16, dtype=np.float32)
    for raw, kind, expected in [(q4_1, 3, np.concatenate([j, 15 - j]) * 2 + 0.5),
                                (q4_0, 2, (np.concatenate([j, 15 - j]) - 8) * 2)]:
        kind_info = SUPPORTED_GGML_TYPES[kind]
        assert np.array_equal(kind_info.dequantize(np.frombuffer(raw, np.uint8)), expected)
    assert gguf.tensors == {}


def test_f32_gguf_model_equals_hf(tmp_path: Path, vocab_model) -> None:
    loaded = load_gguf(llama_gguf_from_hf(tmp_path / "m.gguf", vocab_model))
    assert loaded.config.num_kv_heads == 2 and not loaded.config.tie_word_embeddings
    for name, tensor in vocab_model.state_dict().items():
        torch.testing.assert_close(loaded.tensors[name], tensor, rtol=0, atol=0)  # unpermuted


def test_quantized_gguf_model_runs_close_to_hf(tmp_path: Path, vocab_model) -> None:
    from shunter.engine.model import build_llama
    from shunter.engine.model_runner import ChunkInput, ModelRunner

    types = {"attn_q": "Q8_0", "attn_k": "Q8_0", "attn_v": "F16", "ffn_up": "Q8_0",
             "token_embd": "Q8_0"}
    loaded = load_model(str(llama_gguf_from_hf(tmp_path / "q.gguf", vocab_model, types)))
    model = build_llama(loaded.config, loaded.tensors, max_positions=64)
    runner = ModelRunner(model, num_blocks=4, block_size=16)
    prompt = list(range(40, 60))
    logits = runner.execute([ChunkInput("a", prompt, 0, [0, 1], True)])[0]
    ref = reference_logits(vocab_model, prompt)[-1]
    assert torch.corrcoef(torch.stack([logits, ref]))[0, 1] > 0.99


def test_gguf_tokenizer_and_chat_template(tmp_path: Path, vocab_model) -> None:
    tok = load_gguf(llama_gguf_from_hf(tmp_path / "m.gguf", vocab_model)).tokenizer
    assert tok is not None and tok.eos_token_ids == frozenset({2})
    text = "the cat 42 héllo 日本"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode("0123") == [tok.backend.token_to_id(c) for c in "0123"]  # digits split
    assert tok.encode(" the")[0] == tok.backend.token_to_id("Ġthe")  # merges apply
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.encode(prompt)[0] == 1  # special token text maps to its id


def test_missing_truncated_and_foreign_files_are_model_errors(tmp_path: Path, vocab_model) -> None:
    with pytest.raises(ModelError, match="neither a known name"):
        load_model(str(tmp_path / "absent.gguf"))
    (tmp_path / "junk.gguf").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelError, match="not a GGUF"):
        load_gguf(tmp_path / "junk.gguf")
    good = llama_gguf_from_hf(tmp_path / "m.gguf", vocab_model).read_bytes()
    (tmp_path / "cut.gguf").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError, match="past the end|truncated"):
        load_gguf(tmp_path / "cut.gguf")
    (tmp_path / "head.gguf").write_bytes(good[:200])
    with pytest.raises(ModelError, match="truncated"):
        load_gguf(tmp_path / "head.gguf")
