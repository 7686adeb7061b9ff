"""EngineBackend: n choices, echo, log-probs as the protocol carries them, and what it refuses."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from shunter.backend.protocol import ChatMessage, GenerateChunk, GenerateRequest  # noqa: E402
from shunter.engine.async_client import AsyncEngineClient  # noqa: E402
from shunter.engine.backend import CHAT_PARAMS, COMPLETION_PARAMS, EngineBackend  # noqa: E402
from shunter.engine.config import EngineConfig  # noqa: E402
from shunter.engine.llm import LLMEngine  # noqa: E402
from shunter.engine.sampler import SamplingParams  # noqa: E402

PROMPT = "the cat"


def make_engine(loaded) -> LLMEngine:
    return LLMEngine(EngineConfig.of(model="tiny", dtype="float32", num_blocks=64, block_size=4,
                                  max_model_len=128), loaded=loaded)


def backend(loaded) -> EngineBackend:
    return EngineBackend(AsyncEngineClient(make_engine(loaded)), max_num_seqs=8)


def run(loaded, request: GenerateRequest) -> list[GenerateChunk]:
    async def main() -> list[GenerateChunk]:
        b = backend(loaded)
        try:
            return [chunk async for chunk in b.submit(request)]
        finally:
            await b.close()

    return asyncio.run(main())


def completion(body: dict[str, Any] | None = None, **kw: Any) -> GenerateRequest:
    body = {"model": "m", "prompt": PROMPT, **(body or {})}
    return GenerateRequest(request_id="r1", model="m", prompt=body["prompt"] if isinstance(
        body["prompt"], str) else tuple(body["prompt"]), body=body, **kw)


def chat_request(body: dict[str, Any] | None = None, **kw: Any) -> GenerateRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **(body or {})}
    return GenerateRequest(request_id="r1", model="m", messages=(ChatMessage("user", "hi"),),
                           body=body, **kw)


def test_n_choices_are_indexed_seeded_apart_and_summed(tok_loaded) -> None:
    chunks = run(tok_loaded, completion(n=3, seed=7, max_tokens=6, ignore_eos=True))
    by_index: dict[int, list[GenerateChunk]] = {}
    for chunk in chunks:
        by_index.setdefault(chunk.index, []).append(chunk)
    assert sorted(by_index) == [0, 1, 2]
    assert all(c[-1].finish_reason == "length" for c in by_index.values())
    texts = ["".join(c.text for c in by_index[i]) for i in range(3)]
    direct = make_engine(tok_loaded).generate(
        [PROMPT] * 3, [SamplingParams(seed=7 + i, max_tokens=6, ignore_eos=True)
                       for i in range(3)])
    assert texts == [d.text for d in direct] and len(set(texts)) == 3
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens == 3 * direct[0].num_prompt_tokens
    assert usage.completion_tokens == 18


def test_token_id_prompt_echo_and_logprobs(tok_loaded) -> None:
    ids = tok_loaded.tokenizer.encode(PROMPT)
    chunks = run(tok_loaded, completion({"prompt": ids}, echo=True, logprobs=2, max_tokens=5,
                                        temperature=0.0, ignore_eos=True))
    text = "".join(c.text for c in chunks)
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)
    logprobs = [lp for c in chunks for lp in c.logprobs]
    assert len(logprobs) == len(ids) + 5
    first, *rest = logprobs
    assert first.logprob is None and first.top == ()
    assert [lp.token for lp in logprobs[:len(ids)]] == \
        [tok_loaded.tokenizer.token_text(t) for t in ids]
    for lp in rest:  # completions: the chosen token is among the alternatives (k or k + 1)
        assert lp.logprob <= 0.0 and 2 <= len(lp.top) <= 3
        assert (lp.token, lp.logprob, lp.token_bytes) in lp.top
    output = bytes(b for lp in logprobs[len(ids):] for b in lp.token_bytes)
    # the text holds no partial character at its end; the bytes are all there
    assert output.decode("utf-8", errors="replace").startswith(text[len(PROMPT):])


def test_echo_without_logprobs_and_chat_logprobs(tok_loaded) -> None:
    chunks = run(tok_loaded, completion(echo=True, max_tokens=3, temperature=0.0))
    assert chunks[0].text.startswith(PROMPT) and all(not c.logprobs for c in chunks)
    chunks = run(tok_loaded, chat_request(logprobs=3, max_tokens=4, temperature=0.0,
                                          ignore_eos=True))
    logprobs = [lp for c in chunks for lp in c.logprobs]
    assert len(logprobs) == 4 and all(len(lp.top) == 3 for lp in logprobs)
    assert all(lp.top[0][1] >= lp.logprob for lp in logprobs)


def tools_tokenizer(loaded):
    template = ("{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}"
                "{{ m['content'] }}{% endfor %}")
    return dataclasses.replace(loaded, tokenizer=dataclasses.replace(
        loaded.tokenizer, chat_template=template, _template=None))


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}}]


@pytest.mark.parametrize("request_,param", [
    (completion({"user": "u", "stream_options": {}}), None),
    (completion({"metadata": {"a": "b"}}), "metadata"),
    (chat_request({"user": "u", "metadata": {"a": "b"}}), None),
    (completion({"frobnicate": 1}), "frobnicate"),
    (completion({"suffix": "end"}), "suffix"),
    (completion({"suffix": ""}), None),
    (completion({"best_of": 2}), "best_of"),
    (completion({"use_beam_search": True}), "use_beam_search"),
    (completion({"use_beam_search": False, "length_penalty": 1}), None),
    (completion({"guided_grammar": "root ::= x"}), "guided_grammar"),
    (completion({"guided_regex": "("}), "guided_regex"),
    (completion({"allowed_token_ids": [1, 5000]}), "allowed_token_ids"),
    (completion(response_format={"type": "xml"}), "response_format.type"),
    (completion(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}}}),
     "response_format.json_schema"),
    (completion(response_format={"type": "json_object"}), None),
    (completion(logit_bias=((999, 1.0),)), "logit_bias"),
    (completion(min_tokens=9, max_tokens=4), "min_tokens"),
    (completion({"prompt": [5, 6, 7]}, max_tokens=126), "max_tokens"),
    (completion({"prompt": [5, 6, 7]}, max_tokens=125), None),
    (completion(max_tokens=1000), "max_tokens"),
    (chat_request({"tools": TOOLS}), "tools"),
    (chat_request({"tool_choice": "auto"}), "tool_choice"),
    (chat_request({"tool_choice": "none", "parallel_tool_calls": False}), None),
    (chat_request({"functions": [{"name": "f"}]}), "functions"),
    (chat_request({"echo": True}), "echo"),
    (chat_request({"reasoning_effort": "low"}), "reasoning_effort"),
    (chat_request({"modalities": ["text"], "store": False, "service_tier": "auto"}), None),
    (chat_request({"audio": {"voice": "x"}}), "audio"),
    (chat_request({"prompt": "x"}), "prompt"),
    (completion({"messages": []}), "messages"),
])
def test_unsupported_names_the_parameter(tok_loaded, request_, param) -> None:
    answer = backend(tok_loaded).unsupported(request_)
    assert (answer and answer[0]) == param, answer
    if answer is not None:
        assert answer[1]


def test_tools_pass_when_the_template_renders_them(tok_loaded) -> None:
    b = backend(tools_tokenizer(tok_loaded))
    assert b.unsupported(chat_request({"tools": TOOLS, "tool_choice": "auto"})) is None
    assert b.unsupported(chat_request({"tools": TOOLS, "tool_choice": "required"}))[0] == \
        "tool_choice"
    assert '"name": "f"' in b._prompt(chat_request({"tools": TOOLS}))  # type: ignore[operator]


def test_the_field_lists_hold_the_openai_parameters() -> None:
    assert {"messages", "tools", "top_logprobs", "max_completion_tokens", "user"} <= CHAT_PARAMS
    assert {"prompt", "echo", "best_of", "suffix", "logprobs"} <= COMPLETION_PARAMS
    assert "messages" not in COMPLETION_PARAMS and "prompt" not in CHAT_PARAMS


def test_a_token_only_model_refuses_text(tiny_loaded) -> None:
    b = backend(tiny_loaded)
    assert b.unsupported(completion())[0] == "prompt"
    assert b.unsupported(completion({"prompt": [3, 4]}, stop=("x",)))[0] == "stop"
    assert b.unsupported(completion({"prompt": [3, 4]}, logprobs=1)) is None
