"""The OpenAI API surface, in-process through ASGI against fake backends."""

import json

import pytest
from tests.gateway.factories import MODEL, asgi_client, make_app, run

from shunter.gateway.fake import FakeModel
from shunter.gateway.schemas import DEFAULT_COMPLETION_MAX_TOKENS
from shunter.router.interface import live_refusal
from shunter.router.registry import ROUTERS, make_router


def sse_events(text: str) -> list:
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_completion_returns_the_fake_models_text_and_backend_usage():
    app, fakes = make_app()

    async def go():
        async with asgi_client(app) as c:
            return await c.post("/v1/completions",
                                json={"model": MODEL, "prompt": "hello world", "max_tokens": 5})
    r = run(go())
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == MODEL
    words, reason = FakeModel().generate(_req("hello world", 5))
    assert body["choices"][0]["text"] == "".join(words)
    assert body["choices"][0]["finish_reason"] == reason == "length"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert sum(f.num_submitted for f in fakes) == 1


def _req(prompt, max_tokens, **kw):
    from shunter.backend.protocol import GenerateRequest
    return GenerateRequest(request_id="x", model=MODEL, prompt=prompt, max_tokens=max_tokens, **kw)


def test_completion_default_max_tokens_is_openais_16():
    app, fakes = make_app()
    fakes[0].model = fakes[1].model = FakeModel(num_output_tokens=100)

    async def go():
        async with asgi_client(app) as c:
            return await c.post("/v1/completions", json={"model": MODEL, "prompt": "p"})
    body = run(go()).json()
    assert body["usage"]["completion_tokens"] == DEFAULT_COMPLETION_MAX_TOKENS
    assert body["choices"][0]["finish_reason"] == "length"


def test_chat_stream_with_include_usage_ends_with_a_usage_only_chunk():
    app, _ = make_app()

    async def go():
        async with asgi_client(app) as c:
            return await c.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": 4})
    r = run(go())
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    events = sse_events(r.text)
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    # a role-only first chunk (sent as soon as the request is in), then the content, as OpenAI
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert all("role" not in d for d in deltas[1:])
    assert len(deltas) == 5 and all(e["usage"] is None for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 4
    assert all(e["object"] == "chat.completion.chunk" for e in events)


def test_stream_without_include_usage_has_no_usage_field():
    app, _ = make_app()

    async def go():
        async with asgi_client(app) as c:
            return await c.post("/v1/completions", json={
                "model": MODEL, "prompt": "abc", "stream": True, "max_tokens": 3})
    events = sse_events(run(go()).text)
    assert len(events) == 3 and all("usage" not in e for e in events)
    assert "".join(e["choices"][0]["text"] for e in events) == \
        "".join(FakeModel().generate(_req("abc", 3))[0])


def test_stop_string_ends_the_text_before_it():
    words, _ = FakeModel().generate(_req("stop test", 8, ignore_eos=True))
    stop = words[3].strip()  # the fourth word
    app, _ = make_app()

    async def go():
        async with asgi_client(app) as c:
            return await c.post("/v1/completions", json={
                "model": MODEL, "prompt": "stop test", "max_tokens": 8, "stop": [stop],
                "ignore_eos": True})
    choice = run(go()).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert stop not in choice["text"] and choice["text"].startswith("".join(words[:3]))


def test_ignore_eos_runs_to_max_tokens():
    app, fakes = make_app()
    for f in fakes:
        f.model = FakeModel(num_output_tokens=2)

    async def go():
        async with asgi_client(app) as c:
            a = await c.post("/v1/completions", json={"model": MODEL, "prompt": "x",
                                                      "max_tokens": 6})
            b = await c.post("/v1/completions", json={"model": MODEL, "prompt": "x",
                                                      "max_tokens": 6, "ignore_eos": True})
            return a.json(), b.json()
    a, b = run(go())
    assert a["usage"]["completion_tokens"] == 2 and a["choices"][0]["finish_reason"] == "stop"
    assert b["usage"]["completion_tokens"] == 6 and b["choices"][0]["finish_reason"] == "length"


def test_models_health_openapi_and_metrics():
    app, _ = make_app()

    async def go():
        async with asgi_client(app) as c:
            await c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
            return [await c.get(p) for p in ("/v1/models", "/health", "/openapi.json", "/metrics")]
    models, health, spec, metrics = run(go())
    assert [m["id"] for m in models.json()["data"]] == [MODEL]
    assert health.status_code == 200 and health.json()["healthy"] == ["r0", "r1"]
    assert set(spec.json()["paths"]) >= {"/v1/completions", "/v1/chat/completions", "/v1/models"}
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    for name in ("shunter_time_to_first_token_seconds_bucket", "shunter_e2e_request_latency",
                 "shunter_replica_waiting", "shunter_replica_running", "shunter_replica_kv_usage",
                 "shunter_replica_preemptions", 'shunter_routing_decisions_total{replica="r0"} 1',
                 'shunter_requests_total{tenant="default",outcome="ok"} 1'):
        assert name in text, name


def test_requests_are_routed_by_the_configured_router():
    app, fakes = make_app(3, router="round_robin")

    async def go():
        async with asgi_client(app) as c:
            for _ in range(6):
                await c.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    run(go())
    assert [f.num_submitted for f in fakes] == [2, 2, 2]


@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_any_registry_router_serves_live_or_is_refused_naming_why(router):
    if live_refusal(make_router(router)) is not None:
        with pytest.raises(ValueError, match=f"router '{router}' cannot route live: "):
            make_app(2, router=router)
        return
    app, fakes = make_app(2, router=router)

    async def go():
        async with asgi_client(app) as c:
            return [await c.post("/v1/completions", json={"model": MODEL, "prompt": f"p{i}"})
                    for i in range(4)]
    assert all(r.status_code == 200 for r in run(go()))
    assert sum(f.num_submitted for f in fakes) == 4
