"""Stop conditions (EOS, ignore_eos, stop token ids, stop strings) and streaming UTF-8 text."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from shunter.core.types import FinishReason  # noqa: E402
from shunter.engine.config import EngineConfig  # noqa: E402
from shunter.engine.llm import LLMEngine, generate_text  # noqa: E402
from shunter.engine.loader import load_gguf  # noqa: E402
from shunter.engine.sampler import SamplingParams  # noqa: E402
from shunter.engine.tokenizer import IncrementalDetokenizer  # noqa: E402
from tests.engine.gguf_writer import byte_level_vocab, llama_gguf_from_hf  # noqa: E402
from tests.engine.tiny import make_tiny_hf_model  # noqa: E402

PROMPT = "the cat"


@pytest.fixture(scope="module")
def vocab_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = make_tiny_hf_model(seed=5, vocab_size=len(byte_level_vocab()[0]))
    return llama_gguf_from_hf(tmp_path_factory.mktemp("v") / "m.gguf", model)


@pytest.fixture(scope="module")
def vocab_loaded(vocab_gguf: Path):
    return load_gguf(vocab_gguf)


def make_engine(loaded) -> LLMEngine:
    return LLMEngine(EngineConfig.of(model="tiny", dtype="float32", num_blocks=64, block_size=4),
                     loaded=loaded)


def greedy(loaded, max_tokens: int = 16, **kw):
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)
    return make_engine(loaded).generate([PROMPT], params)[0]


def test_eos_stops_unless_ignored(vocab_loaded) -> None:
    free = greedy(vocab_loaded)
    eos = free.token_ids[3]
    first = free.token_ids.index(eos)
    tok = dataclasses.replace(vocab_loaded.tokenizer, eos_token_ids=frozenset({eos}))
    with_eos = dataclasses.replace(vocab_loaded, tokenizer=tok)
    stopped = greedy(with_eos)
    assert stopped.finish_reason == FinishReason.STOP
    assert stopped.token_ids == free.token_ids[:first + 1]  # the EOS token is reported
    ignored = greedy(with_eos, ignore_eos=True)
    assert ignored.token_ids == free.token_ids and ignored.finish_reason == FinishReason.LENGTH


def test_stop_token_ids(vocab_loaded) -> None:
    free = greedy(vocab_loaded)
    stop_id = free.token_ids[5]
    done = greedy(vocab_loaded, stop_token_ids=(stop_id,))
    assert done.finish_reason == FinishReason.STOP
    assert done.token_ids == free.token_ids[:free.token_ids.index(stop_id) + 1]


def test_stop_string_truncates_text(vocab_loaded) -> None:
    free = greedy(vocab_loaded, max_tokens=24)
    stop = free.text[6:9]
    assert len(stop) == 3
    done = greedy(vocab_loaded, max_tokens=24, stop=(stop, "\x00never"))
    assert done.finish_reason == FinishReason.STOP
    assert done.text == free.text[:free.text.index(stop)]
    assert len(done.token_ids) < len(free.token_ids)


def test_streamed_text_is_whole_utf8(vocab_loaded) -> None:
    tok = vocab_loaded.tokenizer
    text = "naïve 日本語 ok 🚀!"
    ids = tok.encode(text)
    assert len(ids) > len(text)  # byte tokens split characters
    detok = IncrementalDetokenizer(tok)
    deltas = []
    for token_id in ids:
        detok.append(token_id)
        deltas.append(detok.take_delta(False))
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_stop_string_split_across_tokens_is_never_streamed(vocab_loaded) -> None:
    tok = vocab_loaded.tokenizer
    detok = IncrementalDetokenizer(tok, stop=("STOP",))
    streamed = ""
    for token_id in tok.encode("abc STOP def"):
        if detok.append(token_id):
            break
        streamed += detok.take_delta(False)
    streamed += detok.take_delta(True)
    assert detok.is_stopped and streamed == "abc "


def test_engine_outputs_stream_deltas(vocab_loaded) -> None:
    engine = make_engine(vocab_loaded)
    rid = engine.add_request(PROMPT, SamplingParams(temperature=0.0, max_tokens=8))
    outs = list(engine.run())
    assert [o.num_output_tokens for o in outs] == list(range(1, 9))
    assert all(o.request_id == rid and o.num_prompt_tokens == len(vocab_loaded.tokenizer.encode(PROMPT))
               for o in outs)
    text = "".join(o.text for o in outs)
    tokens = [t for o in outs for t in o.new_token_ids]
    assert text == vocab_loaded.tokenizer.decode(tokens)


def test_generate_text_streams_what_it_returns(vocab_gguf: Path, vocab_loaded) -> None:
    pieces: list[str] = []
    text = generate_text(str(vocab_gguf), PROMPT, max_tokens=12, on_text=pieces.append,
                         config={"dtype": "float32", "num_blocks": 32, "block_size": 4})
    assert text == "".join(pieces) == greedy(vocab_loaded, max_tokens=12).text
    chat = generate_text(str(vocab_gguf), PROMPT, max_tokens=4, chat=True,
                         config={"dtype": "float32", "num_blocks": 32, "block_size": 4})
    assert isinstance(chat, str)
