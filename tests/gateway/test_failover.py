"""Retries before the first byte, mid-stream failover by replay, circuit breaking (in-process)."""

import json
import time

from tests.gateway.factories import MODEL, asgi_client, make_app, run

from shunter.backend.protocol import GenerateRequest
from shunter.gateway.breaker import BreakerConfig, BreakerState, CircuitBreaker
from shunter.gateway.fake import FakeEngineClient, FakeModel


def stream_text(text: str) -> tuple[str, list]:
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    return "".join(c["text"] for e in parsed for c in e["choices"]), parsed


def expected(prompt: str, max_tokens: int) -> list[str]:
    request = GenerateRequest(request_id="x", model=MODEL, prompt=prompt, max_tokens=max_tokens,
                              ignore_eos=True)
    return FakeModel().generate(request)[0]


def post(app, body):
    async def go():
        async with asgi_client(app) as c:
            return await c.post("/v1/completions", json=body)
    return run(go())


def test_failure_before_first_byte_is_retried_on_another_replica():
    app, (r0, r1) = make_app()
    r0.is_failing, r0.fail_status = True, 503
    r = post(app, {"model": MODEL, "prompt": "hello", "max_tokens": 4})
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == "".join(expected("hello", 4)[:4])
    assert (r0.num_submitted, r1.num_submitted) == (1, 1)
    assert app.metrics.failovers.get(("before_first_byte",)) == 1
    assert app.pool.replicas[0].breaker.num_consecutive_failures == 1


def test_backend_4xx_is_passed_through_not_retried_and_not_held_against_the_backend():
    app, (r0, r1) = make_app()
    r0.is_failing, r0.fail_status = True, 400
    r = post(app, {"model": MODEL, "prompt": "hello"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "backend_error"
    assert r1.num_submitted == 0
    assert app.pool.replicas[0].breaker.num_consecutive_failures == 0


def test_backend_dying_mid_stream_continues_on_another_replica_unbroken():
    app, (r0, r1) = make_app()
    r0.fail_after_tokens = 3
    body = {"model": MODEL, "prompt": "a story", "max_tokens": 10, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    r = post(app, body)
    text, events = stream_text(r.text)
    assert text == "".join(expected("a story", 10))
    assert events[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 10,
                                   "total_tokens": 12}
    finishes = [c["finish_reason"] for e in events for c in e["choices"]]
    assert finishes == [None] * 9 + ["length"]
    assert len({e["id"] for e in events}) == 1
    assert (r0.num_submitted, r1.num_submitted) == (1, 1)
    assert app.metrics.failovers.get(("mid_stream",)) == 1


def test_every_replica_dying_mid_stream_ends_the_stream_with_an_error_event():
    app, fakes = make_app()
    for f in fakes:
        f.fail_after_tokens = 2
    r = post(app, {"model": MODEL, "prompt": "x", "max_tokens": 10, "ignore_eos": True,
                   "stream": True})
    assert r.status_code == 200
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]" and "error" in json.loads(events[-2])
    assert len(events) - 2 == 4  # two words from each replica reached the client


def test_all_replicas_failing_before_output_is_502():
    app, fakes = make_app()
    for f in fakes:
        f.is_failing = True
    r = post(app, {"model": MODEL, "prompt": "x"})
    assert r.status_code == 502 and r.json()["error"]["type"] == "api_error"


def test_breaker_opens_after_consecutive_failures_and_stops_traffic():
    app, (r0, r1) = make_app()
    r0.is_failing, r0.fail_status = True, 500
    for _ in range(6):
        assert post(app, {"model": MODEL, "prompt": "x"}).status_code == 200
    assert app.pool.replicas[0].breaker.state is BreakerState.OPEN
    assert r0.num_submitted == 3 and r1.num_submitted == 6


def test_breaker_half_opens_after_cooldown_and_closes_on_success():
    b = CircuitBreaker(BreakerConfig(failure_threshold=2, cooldown_s=10, success_threshold=1))
    b.on_failure(0.0)
    assert b.can_send(1.0)
    b.on_failure(1.0)
    assert b.state is BreakerState.OPEN and not b.can_send(5.0)
    assert b.can_send(11.0) and b.state is BreakerState.HALF_OPEN
    b.on_send()
    assert not b.can_send(11.0)  # one probe at a time
    b.on_failure(12.0)
    assert b.state is BreakerState.OPEN and not b.can_send(13.0)
    assert b.can_send(32.0)  # the second ejection lasts 2 x 10 s
    b.on_send()
    b.on_success(32.0)
    assert b.state is BreakerState.CLOSED and b.can_send(33.0)


def test_breaker_closes_only_after_several_probes_and_ejects_for_longer_each_time():
    """Issue 16, finding 6: one passing health check half-opened the breaker and one success
    closed it; a flapping backend was back in rotation at once, every time."""
    b = CircuitBreaker(BreakerConfig(failure_threshold=1, cooldown_s=5, max_ejection_s=12,
                                     success_threshold=3))
    b.on_failure(0.0)
    assert b.ejected_for_s(1.0) == 4.0
    assert b.can_send(5.0)
    for t in (5.0, 6.0):
        b.on_send()
        b.on_success(t)
        assert b.state is BreakerState.HALF_OPEN  # not yet: three in a row
    b.on_send()
    b.on_success(7.0)
    assert b.state is BreakerState.CLOSED
    b.on_failure(8.0)  # flaps again soon: the second ejection is twice as long
    assert not b.can_send(17.0) and b.can_send(18.0)
    b.on_send()
    b.on_failure(18.0)  # the third would be 15 s: capped at 12
    assert not b.can_send(29.9) and b.can_send(30.0)


def test_an_ejection_multiplier_decays_while_the_backend_behaves():
    """A backend that fails now and then among long good stretches (the chaos soak's: faults
    rotate over every backend) must not be ejected for ever longer, or every backend ends up
    ejected at once and the gateway answers 503 with healthy backends."""
    b = CircuitBreaker(BreakerConfig(failure_threshold=1, cooldown_s=1, max_ejection_s=100,
                                     success_threshold=1))
    t = 0.0
    for n in range(1, 5):  # four ejections back to back: 1, 2, 3, 4 s
        b.on_failure(t)
        assert b.ejection_s == n
        t += n
        assert b.can_send(t)
        b.on_send()
        b.on_success(t)
    b.on_failure(t + 2.5)  # closed for 2.5 s: two steps back, then this one: 3 s
    assert b.ejection_s == 3
    t += 2.5 + 3
    assert b.can_send(t)
    b.on_send()
    b.on_success(t)
    b.on_failure(t + 60)  # behaved for long: the first ejection's length again
    assert b.ejection_s == 1


def test_a_passing_health_check_does_not_end_an_ejection():
    app, (r0, r1) = make_app()
    r0.is_failing, r0.fail_status = True, 500

    async def go():
        async with asgi_client(app) as c:
            for _ in range(6):  # round robin: three reach the failing replica
                await c.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
        assert app.pool.replicas[0].breaker.state is BreakerState.OPEN
        await app.pool.check_once()  # /health still says ok
        assert app.pool.replicas[0].breaker.state is BreakerState.OPEN
        assert not app.pool.replicas[0].can_route(app.pool.clock())
    run(go())


def test_health_check_takes_an_unhealthy_replica_out_and_back():
    app, (r0, r1) = make_app()

    async def go():
        r0.is_healthy = False
        await app.pool.check_once()
        async with asgi_client(app) as c:
            for _ in range(3):
                await c.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
            health = await c.get("/health")
        assert health.json()["healthy"] == ["r1"]
        r0.is_healthy = True
        await app.pool.check_once()
        assert app.pool.capacity() == 128
    run(go())
    assert (r0.num_submitted, r1.num_submitted) == (0, 3)


def test_a_health_check_that_raises_is_logged_and_the_checks_go_on(caplog, monkeypatch):
    """CI, stop 36: an exception a backend client raised outside (TimeoutError, BackendError,
    OSError) left `check_once`, and the background loop of every later check ended with it."""
    app, (r0, r1) = make_app()
    load = FakeEngineClient.load

    async def broken_load(client):
        if client is r0:
            raise RuntimeError("metrics the client cannot read")
        return await load(client)

    async def go():
        monkeypatch.setattr(FakeEngineClient, "load", broken_load)
        await app.pool.check_once()  # raised before
        assert [r.is_healthy for r in app.pool.replicas] == [False, True]
        monkeypatch.undo()
        await app.pool.check_once()
        assert [r.is_healthy for r in app.pool.replicas] == [True, True]
    run(go())
    assert "health check of backend r0 failed" in caplog.text
    assert "metrics the client cannot read" in caplog.text


def test_every_backend_down_is_a_503_at_once_not_a_queue_timeout():
    """Issue 16, finding 5: with every backend down, requests waited the full queue time
    (60 s) and got a 429 queue_timeout."""
    app, fakes = make_app()

    async def go():
        for f in fakes:
            f.is_healthy = False
        await app.pool.check_once()
        async with asgi_client(app) as c:
            start = time.monotonic()
            r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
            return r, time.monotonic() - start
    r, took = run(go())
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_backend"
    assert int(r.headers["retry-after"]) >= 1 and took < 1.0
