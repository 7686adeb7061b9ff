"""The gateway's answers as clients and proxies see them: request ids, Allow, CORS, rate-limit
headers, endpoints beside generation, lists of prompts, and streams that answer at once."""

import asyncio
import json

import pytest
from tests.gateway.factories import MODEL, asgi_client, make_app, run
from tests.gateway.virtual_time import run_virtual

from shunter.backend.protocol import BackendError, GenerateChunk
from shunter.gateway.fake import FakeEngineClient
from shunter.gateway.pool import Attempt
from shunter.gateway.tenant import TenantConfig


def call(app, method, path, **kwargs):
    async def go():
        async with asgi_client(app) as c:
            return await c.request(method, path, **kwargs)
    return run(go())


def test_every_answer_carries_a_request_id_the_clients_own_if_it_sent_one():
    app, _ = make_app()
    ok = call(app, "POST", "/v1/completions", json={"model": MODEL, "prompt": "hi"},
              headers={"x-request-id": "trace-42"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "trace-42"
    bad = call(app, "POST", "/v1/completions", json={"model": MODEL})
    assert bad.status_code == 400 and bad.headers["x-request-id"].startswith("cmpl-")
    assert call(app, "GET", "/nowhere").headers["x-request-id"]
    assert app.metrics.responses.get(("200",)) == 1 and app.metrics.responses.get(("400",)) == 1


def test_405_says_what_is_allowed():
    app, _ = make_app()
    r = call(app, "GET", "/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = call(app, "DELETE", "/v1/models")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


def test_version_models_by_id_and_tokenize():
    app, _ = make_app()
    assert call(app, "GET", "/version").json()["version"]
    model = call(app, "GET", f"/v1/models/{MODEL}")
    assert model.status_code == 200 and model.json()["id"] == MODEL
    missing = call(app, "GET", "/v1/models/gpt-9")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    tokens = call(app, "POST", "/tokenize", json={"model": MODEL, "prompt": "one two three"})
    assert tokens.status_code == 200 and tokens.json()["count"] == 3
    embed = call(app, "POST", "/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert embed.status_code == 404 and "/v1/embeddings" in embed.json()["error"]["message"]


def test_cors_is_off_unless_configured():
    app, _ = make_app()
    r = call(app, "GET", "/v1/models", headers={"origin": "https://app.example"})
    assert "access-control-allow-origin" not in r.headers
    app, _ = make_app(cors_origins=("https://app.example",))
    pre = call(app, "OPTIONS", "/v1/chat/completions", headers={
        "origin": "https://app.example", "access-control-request-method": "POST"})
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in pre.headers["access-control-allow-headers"]
    other = call(app, "GET", "/v1/models", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_tenants_with_limits_see_ratelimit_headers():
    app, _ = make_app(tenants=(TenantConfig(name="t", api_keys=("k",), max_requests_per_min=10,
                                            max_tokens_per_min=1000),))
    r = call(app, "POST", "/v1/completions", json={"model": MODEL, "prompt": "hi there"},
             headers={"authorization": "Bearer k"})
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit-requests"] == "10"
    assert r.headers["x-ratelimit-remaining-requests"] == "9"
    assert int(r.headers["x-ratelimit-remaining-tokens"]) < 1000
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")


def test_a_list_of_prompts_gives_one_choice_per_prompt_and_their_usage():
    app, fakes = make_app()
    r = call(app, "POST", "/v1/completions", json={"model": MODEL, "prompt": ["a b", "c d e"],
                                                   "max_tokens": 3})
    body = r.json()
    assert r.status_code == 200 and [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 6 and body["usage"]["prompt_tokens"] == 5
    assert sum(f.num_submitted for f in fakes) == 2


def test_a_stream_answers_at_once_and_keeps_alive_while_it_waits_in_the_queue():
    """Headers, the role chunk and keep-alive comments go out while the request waits."""
    async def go():
        app, fakes = make_app(num_backends=1, max_concurrency=1, keepalive_s=1.0)
        fakes[0].first_token_delay_s = 3.5
        async with asgi_client(app) as c:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 2, "stream": True}
            first, second = await asyncio.gather(c.post("/v1/chat/completions", json=body),
                                                 c.post("/v1/chat/completions", json=body))
        return first, second

    first, second = run_virtual(go())
    for r in (first, second):
        assert r.status_code == 200
    events = second.text.split("\n\n")
    assert events[0].startswith("data: ") and '"role":"assistant"' in events[0]
    beats = [i for i, e in enumerate(events) if e == ": keep-alive"]
    content = next(i for i, e in enumerate(events) if '"content":" ' in e)
    assert len(beats) >= 6 and max(beats) < content  # waited 3.5 s queued + 3.5 s to a token


def test_a_failover_after_tool_call_deltas_is_an_error_not_a_replay():
    class ToolCallThenDie(FakeEngineClient):
        def submit(self, request):
            async def chunks():
                yield GenerateChunk("", has_tool_calls=True, payload={"choices": [{
                    "index": 0, "delta": {"tool_calls": [{"index": 0, "function": {
                        "name": "f", "arguments": "{"}}]}}]})
                raise BackendError("died")
            return chunks()

    app, fakes = make_app(num_backends=2)
    for replica in app.pool.replicas:
        replica.client = ToolCallThenDie()

    async def go():
        request = app.pool.spec  # (the pool builds the spec from the request)
        from shunter.backend.protocol import ChatMessage, GenerateRequest
        gen = GenerateRequest(request_id="x", model=MODEL, messages=(ChatMessage("user", "hi"),))
        got = []
        with pytest.raises(BackendError, match="cannot be resumed"):
            async for chunk in app.pool.generate(gen, request(gen), Attempt()):
                got.append(chunk)
        return got
    assert len(run(go())) == 1


def test_tool_calls_from_a_backend_reach_the_client_untouched():
    class ToolCaller(FakeEngineClient):
        def submit(self, request):
            async def chunks():
                call_delta = {"index": 0, "id": "call_1", "type": "function",
                              "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
                yield GenerateChunk("", payload={"id": "b", "object": "chat.completion.chunk",
                                                 "created": 1, "model": "backend-model",
                                                 "system_fingerprint": "fp_1", "choices": [{
                                                     "index": 0, "delta": {"tool_calls": [call_delta]},
                                                     "logprobs": None, "finish_reason": None}]},
                                    has_tool_calls=True)
                yield GenerateChunk("", "tool_calls", payload={"choices": [{
                    "index": 0, "delta": {}, "finish_reason": "tool_calls",
                    "stop_reason": None}], "usage": {"prompt_tokens": 5,
                                                     "completion_tokens": 7}})
            return chunks()

    app, _ = make_app(num_backends=1)
    app.pool.replicas[0].client = ToolCaller()
    r = call(app, "POST", "/v1/chat/completions", json={
        "model": MODEL, "stream": True, "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}]})
    events = [json.loads(e[6:]) for e in r.text.split("\n\n") if e.startswith("data: {")]
    assert events[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == \
        '{"city":"Paris"}'
    assert events[1]["system_fingerprint"] == "fp_1" and events[1]["model"] == MODEL
    assert events[2]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[2]["choices"][0]["stop_reason"] is None and "usage" not in events[2]
