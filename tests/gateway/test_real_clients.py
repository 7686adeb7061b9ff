"""Real clients through the gateway in front of a recording OpenAI server: the official `openai`
SDK (tool calls, logprobs, JSON mode, `n`, vLLM's extra fields), litellm and LangChain's
ChatOpenAI. Every call runs twice, straight at the backend and through the gateway, with both
sides of the wire captured; `Rig.run` checks that the backend got every field the client sent,
the client every field the backend answered (`passthrough.py`), and that both runs gave the
client the same answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("aiohttp")
pytest.register_assert_rewrite("tests.gateway.passthrough")  # its asserts explain themselves

from tests.gateway.live import MODEL, live_gateway  # noqa: E402
from tests.gateway.passthrough import CaptureTransport, Rig  # noqa: E402
from tests.gateway.recording_server import (  # noqa: E402
    Script,
    ScriptedChoice,
    Token,
    ToolCall,
    recording_server,
    text_choice,
)

WEATHER = ToolCall("call_w1", "get_weather", '{"city": "Paris", "unit": "celsius"}', 4)
TIME = ToolCall("call_t2", "get_time", '{"timezone": "Europe/Paris"}', 2)
TOOLS = [{"type": "function", "function": {"name": name, "description": f"{name} of a place",
                                           "parameters": {"type": "object", "properties": {
                                               p: {"type": "string"} for p in params}}}}
         for name, params in (("get_weather", ("city", "unit")), ("get_time", ("timezone",)))]
TOOL_SCRIPT = ScriptedChoice(tool_calls=(WEATHER, TIME), finish_reason="tool_calls")
ASK = [{"role": "user", "content": "Weather and time in Paris?"}]


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with recording_server() as server, \
            live_gateway(clients=[("rec", server.client())]) as stack:
        yield Rig(server, stack.base_url)


def sdk(base_url: str, http: Any) -> Any:
    return openai.OpenAI(base_url=base_url, api_key="k", http_client=http, max_retries=0)


def calls_of(message: Any) -> list[tuple[str, str, str]]:
    return [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ()]


SCRIPTED_CALLS = [(t.call_id, t.name, t.arguments) for t in (WEATHER, TIME)]


@pytest.mark.parametrize("style", ["vllm", "openai"])
def test_openai_sdk_tool_calls_whole_and_streamed(rig, style):
    script = Script(choices=(TOOL_SCRIPT,), style=style)

    def whole(base_url, http):
        return sdk(base_url, http).chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="auto", parallel_tool_calls=True)

    def streamed(base_url, http):
        with sdk(base_url, http).chat.completions.stream(model=MODEL, messages=ASK, tools=TOOLS,
                                                         tool_choice="auto") as stream:
            return stream.get_final_completion()

    for call in (whole, streamed):
        direct, routed = rig.run(call, script)
        assert calls_of(routed.choices[0].message) == calls_of(direct.choices[0].message) \
            == SCRIPTED_CALLS
        assert routed.choices[0].finish_reason == "tool_calls"
        assert routed.system_fingerprint == direct.system_fingerprint == "fp_recorded"
    # the next turn: the assistant's tool calls and the tools' answers reach the backend whole
    turn = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
        for i, n, a in SCRIPTED_CALLS]}] + [
        {"role": "tool", "tool_call_id": i, "content": json.dumps({"ok": n})}
        for i, n, _ in SCRIPTED_CALLS]
    direct, routed = rig.run(lambda u, h: sdk(u, h).chat.completions.create(
        model=MODEL, messages=turn, tools=TOOLS), Script(style=style))
    assert routed.choices[0].message.content == "Hello there!"


def test_openai_sdk_logprobs_chat_and_completions(rig):
    script = Script(choices=(ScriptedChoice(tokens=(
        Token("Par", -0.0625, (("Par", -0.0625), ("Lon", -3.5), ("Ber", -4.25))),
        Token("is", -0.001953125, (("is", -0.001953125), ("ma", -7.0), ("sa", -8.5)))),
        stop_reason=2),),)
    for stream in (False, True):
        direct, routed = rig.run(lambda u, h, s=stream: _chat_logprobs(sdk(u, h), s), script)
        assert routed == direct == [("Par", -0.0625, [("Par", -0.0625), ("Lon", -3.5)]),
                                    ("is", -0.001953125, [("is", -0.001953125), ("ma", -7.0)])]
        direct, routed = rig.run(lambda u, h, s=stream: _completion_logprobs(sdk(u, h), s),
                                 script)
        assert routed == direct == [("Par", -0.0625, {"Par": -0.0625, "Lon": -3.5, "Ber": -4.25}),
                                    ("is", -0.001953125, {"is": -0.001953125, "ma": -7.0,
                                                          "sa": -8.5})]


def _chat_logprobs(client: Any, stream: bool) -> list[Any]:
    kwargs = dict(model=MODEL, messages=ASK, logprobs=True, top_logprobs=2, temperature=0)
    if stream:
        with client.chat.completions.stream(**kwargs) as events:
            final = events.get_final_completion()
    else:
        final = client.chat.completions.create(**kwargs)
    return [(e.token, e.logprob, [(t.token, t.logprob) for t in e.top_logprobs])
            for e in final.choices[0].logprobs.content]


def _completion_logprobs(client: Any, stream: bool) -> list[Any]:
    answer = client.completions.create(model=MODEL, prompt="The capital of France is",
                                       logprobs=3, max_tokens=2, temperature=0, stream=stream,
                                       extra_body={"stop_token_ids": [2]})
    parts = list(answer) if stream else [answer]
    return [(t, lp, top) for p in parts for c in p.choices if c.logprobs
            for t, lp, top in zip(c.logprobs.tokens, c.logprobs.token_logprobs,
                                  c.logprobs.top_logprobs, strict=True)]


def test_openai_sdk_json_mode_and_structured_output(rig):
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):
        name: str
        population_millions: float

    script = Script(choices=(text_choice('{"name": ', '"Paris", ', '"population_millions": 2.1}'),))
    for fmt in ({"type": "json_object"}, {"type": "json_schema", "json_schema": {
            "name": "city", "strict": True, "schema": City.model_json_schema()}}):
        direct, routed = rig.run(lambda u, h, f=fmt: sdk(u, h).chat.completions.create(
            model=MODEL, messages=ASK, response_format=f), script)
        assert json.loads(routed.choices[0].message.content) == {"name": "Paris",
                                                                 "population_millions": 2.1}
    direct, routed = rig.run(lambda u, h: sdk(u, h).chat.completions.parse(
        model=MODEL, messages=ASK, response_format=City), script)
    assert routed.choices[0].message.parsed == City(name="Paris", population_millions=2.1)


def test_openai_sdk_n_choices_refusal_usage_and_vllm_extras(rig):
    script = Script(choices=(text_choice("Sí", "."), ScriptedChoice(refusal="I can't do that.",
                                                                     finish_reason="stop")))
    extras = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 1,
              "chat_template_kwargs": {"enable_thinking": False}, "skip_special_tokens": False,
              "include_stop_str_in_output": True, "priority": 0, "an_unknown_field": [1, 2.5],
              "return_token_ids": True,
              "program_id": "agent-7", "session_id": "s-1"}  # the last two: Shunter's own
    for stream in (False, True):
        def call(u, h, s=stream):
            answer = sdk(u, h).chat.completions.create(
                model=MODEL, messages=ASK, n=2, seed=7, stop=["\n\n"], stream=s, user="u-1",
                max_completion_tokens=9, stream_options={"include_usage": True} if s else None,
                extra_body=extras, extra_headers={"x-request-id": "client-rid"})
            return list(answer) if s else answer
        direct, routed = rig.run(call, script)
        if stream:
            assert routed[-1].usage.prompt_tokens_details.cached_tokens == 3
            contents = {i: "".join(c.choices[0].delta.content or "" for c in routed
                                   if c.choices and c.choices[0].index == i) for i in (0, 1)}
            assert contents == {0: "Sí.", 1: ""}
            token_ids = [c.model_extra.get("prompt_token_ids") for c in routed]
            assert [t for t in token_ids if t is not None] == [list(range(1, 12))] * 2
        else:
            assert [c.message.content for c in routed.choices] == ["Sí.", None]
            assert routed.choices[1].message.refusal == "I can't do that."
            assert routed.usage.prompt_tokens_details.cached_tokens == 3
            assert routed.choices[0].model_extra["stop_reason"] is None
            assert routed.model_extra["prompt_token_ids"] == list(range(1, 12))
    received = rig.server.exchanges[-1].json
    assert "program_id" not in received and received["an_unknown_field"] == [1, 2.5]


def test_prompt_list_fans_out_and_merges_every_field(rig):
    rig.server.script = Script(choices=(text_choice("A", "B", stop_reason="B"),))
    capture, first = CaptureTransport(), len(rig.server.exchanges)
    with httpx.Client(transport=capture, timeout=10) as http:
        answer = sdk(rig.gateway_url, http).completions.create(
            model=MODEL, prompt=["one", "two"], n=2, max_tokens=3, extra_body={"top_k": 3})
    bodies = [e.json for e in rig.server.exchanges[first:]]
    assert [b["prompt"] for b in bodies] == ["one", "two"]
    assert all(b == {**json.loads(capture.exchanges[0].body), "prompt": b["prompt"]}
               for b in bodies)
    assert [(c.index, c.text, c.model_extra["stop_reason"]) for c in answer.choices] == \
        [(i, "AB", "B") for i in range(4)]
    assert answer.system_fingerprint == "fp_recorded"
    assert answer.usage.prompt_tokens_details.cached_tokens == 6
    chunks = list(sdk(rig.gateway_url, None).completions.create(
        model=MODEL, prompt=["one", "two"], n=2, max_tokens=3, stream=True))
    assert sorted((c.choices[0].index, c.system_fingerprint, c.choices[0].model_extra[
        "stop_reason"]) for c in chunks if c.choices[0].finish_reason) == \
        [(i, "fp_recorded", "B") for i in range(4)]


def test_forwarded_endpoints_pass_bodies_and_answers_through(rig):
    direct, routed = rig.run(lambda u, h: sdk(u, h).embeddings.create(
        model=MODEL, input=["a", "b"], encoding_format="float", dimensions=3))
    assert routed.data[1].embedding == [0.25, -0.5, 0.25]

    def tokenize(base_url, http):
        root = base_url.removesuffix("/v1")
        return http.post(f"{root}/tokenize", json={"model": MODEL, "prompt": "a b c",
                                                   "add_special_tokens": False}).json()
    direct, routed = rig.run(tokenize)
    assert routed == direct


def test_a_backend_4xx_reaches_the_client_with_its_message_param_and_code(rig):
    error = {"message": "'tools[0].function.name' is too long", "type": "invalid_request_error",
             "param": "tools[0].function.name", "code": "string_above_max_length"}
    rig.server.script = Script(error=error)
    for base_url in (f"{rig.server.url}/v1", rig.gateway_url):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk(base_url, None).chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
        assert caught.value.status_code == 400 and caught.value.body == error


@pytest.mark.filterwarnings("ignore:.*ReadOnly. qualifier:UserWarning")  # litellm's types
def test_litellm_tool_calls_and_json_mode(rig, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch at import
    litellm = pytest.importorskip("litellm")
    monkeypatch.setattr(litellm, "telemetry", False, raising=False)

    def call(base_url, http, stream=False, **kwargs):
        answer = litellm.completion(model=f"openai/{MODEL}", api_base=base_url, api_key="k",
                                    client=sdk(base_url, http), messages=ASK, stream=stream,
                                    **kwargs)
        if not stream:
            return answer
        return litellm.stream_chunk_builder(list(answer), messages=ASK)

    tools = Script(choices=(TOOL_SCRIPT,))
    for stream in (False, True):
        direct, routed = rig.run(lambda u, h, s=stream: call(u, h, s, tools=TOOLS), tools)
        assert calls_of(routed.choices[0].message) == calls_of(direct.choices[0].message) \
            == SCRIPTED_CALLS
    script = Script(choices=(text_choice('{"ok": ', "true}"),))
    direct, routed = rig.run(lambda u, h: call(u, h, response_format={"type": "json_object"},
                                               logprobs=True, top_logprobs=1), script)
    assert json.loads(routed.choices[0].message.content) == {"ok": True}
    assert routed.choices[0].logprobs == direct.choices[0].logprobs


def test_langchain_bind_tools_and_structured_output(rig):
    langchain_openai = pytest.importorskip("langchain_openai")
    pydantic = pytest.importorskip("pydantic")

    class Weather(pydantic.BaseModel):
        """The weather somewhere."""

        city: str
        unit: str

    def model(base_url, http, **kwargs):
        return langchain_openai.ChatOpenAI(model=MODEL, base_url=base_url, api_key="k",
                                           http_client=http, max_retries=0, **kwargs)

    tools = Script(choices=(TOOL_SCRIPT,))
    for streaming in (False, True):
        direct, routed = rig.run(lambda u, h, s=streaming: model(u, h, streaming=s).bind_tools(
            TOOLS).invoke("Weather and time in Paris?"), tools)
        assert [(c["id"], c["name"], c["args"]) for c in routed.tool_calls] == [
            (i, n, json.loads(a)) for i, n, a in SCRIPTED_CALLS]
        assert routed.tool_calls == direct.tool_calls
    weather = Script(choices=(text_choice('{"city": "Paris", ', '"unit": "celsius"}'),))
    direct, routed = rig.run(lambda u, h: model(u, h).with_structured_output(
        Weather, method="json_schema").invoke("Weather in Paris?"), weather)
    assert routed == direct == Weather(city="Paris", unit="celsius")
    forced = Script(choices=(ScriptedChoice(tool_calls=(ToolCall(
        "call_x", "Weather", '{"city": "Paris", "unit": "celsius"}'),), finish_reason="stop"),))
    direct, routed = rig.run(lambda u, h: model(u, h).with_structured_output(
        Weather, method="function_calling").invoke("Weather in Paris?"), forced)
    assert routed == direct == Weather(city="Paris", unit="celsius")
