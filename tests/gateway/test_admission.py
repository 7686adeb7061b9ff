"""Rate limits, the gateway tier's queue (a core policy), bounded queues, shedding, Retry-After."""

import asyncio
import dataclasses
import itertools

import pytest
from tests.gateway.factories import MODEL, ManualClock, asgi_client, make_app, run

from shunter.core.request import Request
from shunter.core.sched.gateway_queue import GatewayQueue
from shunter.gateway.admission import AdmissionConfig, AdmissionController
from shunter.gateway.errors import RateLimitError, ServiceUnavailableError
from shunter.gateway.factory import GatewayParts, gateway_policy
from shunter.gateway.metrics import GatewayMetrics
from shunter.gateway.tenant import TenantConfig, TenantTable

_ids = itertools.count()


def controller(tenants, *, capacity=1, clock=None, policy="vtc", **config):
    clock = clock or ManualClock()
    tenants = [t if t.api_keys else dataclasses.replace(t, api_keys=(f"key-{t.name}",))
               for t in tenants]
    table = TenantTable.build(list(tenants), clock())
    slots = {"n": capacity}
    parts = GatewayParts(app=None, policy=policy, tenants=tuple(tenants))
    ctl = AdmissionController(AdmissionConfig(**config), table, lambda: slots["n"],
                              GatewayMetrics(), clock, GatewayQueue(gateway_policy(parts)))
    return ctl, clock


def admit(ctl, tenant, priority, num_prompt_tokens, max_tokens):
    """`ctl.admit` of a new request with these facts."""
    return ctl.admit(Request(request_id=f"q{next(_ids)}", arrival_s=ctl.clock(),
                             num_prompt_tokens=num_prompt_tokens,
                             max_output_tokens=max_tokens or None, tenant=tenant,
                             priority=priority))


def test_rate_limit_requests_per_minute_gives_429_with_retry_after():
    ctl, clock = controller([TenantConfig(name="a", max_requests_per_min=2)], capacity=10)

    async def go():
        await admit(ctl, "a", 0, 10, 10)
        await admit(ctl, "a", 0, 10, 10)
        with pytest.raises(RateLimitError) as info:
            await admit(ctl, "a", 0, 10, 10)
        assert info.value.retry_after_s == pytest.approx(30.0)  # 1 request at 2/min
        clock.now_s += 30.0
        await admit(ctl, "a", 0, 10, 10)
    run(go())
    assert ctl.metrics.rejected.get(("a", "rate_limit")) == 1


def test_token_limit_charges_the_estimate_then_settles_on_usage():
    ctl, clock = controller([TenantConfig(name="a", max_tokens_per_min=600)], capacity=10)

    async def go():
        t = await admit(ctl, "a", 0, 100, 400)  # estimate 500 of 600
        with pytest.raises(RateLimitError) as info:
            await admit(ctl, "a", 0, 100, 100)  # 200 more: 100 short at 10 tokens/s
        assert info.value.retry_after_s == pytest.approx(10.0)
        ctl.release(t, 100, 50)  # it used 150, not 500: 350 refunded
        await admit(ctl, "a", 0, 100, 100)
    run(go())


def test_fast_path_admits_until_capacity_then_queues():
    ctl, _ = controller([], capacity=2)

    async def go():
        a = await admit(ctl, "default", 0, 1, 1)
        await admit(ctl, "default", 0, 1, 1)
        waiting = asyncio.ensure_future(admit(ctl, "default", 0, 1, 1))
        await asyncio.sleep(0)
        assert not waiting.done() and ctl.num_queued == 1
        ctl.release(a, 1, 1)
        await asyncio.wait_for(waiting, 1)
        assert ctl.num_active == 2 and ctl.num_queued == 0
    run(go())


def test_vtc_serves_the_least_served_tenant_first_by_weight():
    """Tenant b (weight 2) gets two slots for each of a's while both are backlogged."""
    ctl, _ = controller([TenantConfig(name="a", weight=1), TenantConfig(name="b", weight=2)],
                        capacity=1)
    order = []

    async def client(tenant, i):
        ticket = await admit(ctl, tenant, 0, 100, 0)
        order.append(tenant)
        await asyncio.sleep(0)
        ctl.release(ticket, 100, 100)  # service 100 + 2 * 100 = 300 each

    async def go():
        blocker = await admit(ctl, "a", 0, 1, 0)
        tasks = [asyncio.ensure_future(client(t, i)) for i in range(6) for t in ("a", "b")]
        await asyncio.sleep(0)
        ctl.release(blocker, 1, 0)
        await asyncio.wait_for(asyncio.gather(*tasks), 2)
    run(go())
    first_nine = order[:9]
    assert first_nine.count("b") == 6 and first_nine.count("a") == 3, order


def test_newly_backlogged_tenant_gets_no_credit_for_idling():
    ctl, _ = controller([TenantConfig(name="a"), TenantConfig(name="b")], capacity=1)
    counters = ctl.queue.policy.counters
    counters.update({"a": 1000.0, "b": 0.0})

    async def go():
        blocker = await admit(ctl, "b", 0, 1, 0)
        wa = asyncio.ensure_future(admit(ctl, "a", 0, 1, 0))
        await asyncio.sleep(0)
        wb = asyncio.ensure_future(admit(ctl, "b", 0, 1, 0))
        await asyncio.sleep(0)
        ctl.release(blocker, 1, 0)
        # b had nothing waiting while a waited: lifted to a's counter, then a (earlier) first
        assert counters["b"] >= 1000.0
        assert [r.tenant for r in ctl.queue] == ["b"]
        await asyncio.wait_for(wa, 1)
        wb.cancel()
    run(go())


def test_full_queue_sheds_lowest_priority_for_a_more_urgent_request():
    ctl, _ = controller([], capacity=1, max_queued=2)

    async def go():
        blocker = await admit(ctl, "default", 0, 1, 0)
        low = asyncio.ensure_future(admit(ctl, "default", 5, 1, 0))
        mid = asyncio.ensure_future(admit(ctl, "default", 1, 1, 0))
        await asyncio.sleep(0)
        with pytest.raises(RateLimitError):  # as unimportant as the least: refused
            await admit(ctl, "default", 5, 1, 0)
        urgent = asyncio.ensure_future(admit(ctl, "default", 0, 1, 0))
        await asyncio.sleep(0)
        with pytest.raises(RateLimitError) as info:
            await low
        assert info.value.code == "shed"
        ctl.release(blocker, 1, 0)
        await asyncio.wait_for(urgent, 1)  # the most urgent goes first
        assert not mid.done()
        mid.cancel()
    run(go())
    assert ctl.metrics.rejected.get(("default", "shed")) == 1
    assert ctl.metrics.rejected.get(("default", "queue_full")) == 1


def test_queue_timeout_is_429_and_frees_the_queue_slot():
    ctl, _ = controller([], capacity=1, max_queue_wait_s=0.05)

    async def go():
        await admit(ctl, "default", 0, 1, 0)
        with pytest.raises(RateLimitError) as info:
            await admit(ctl, "default", 0, 1, 0)
        assert info.value.code == "queue_timeout" and ctl.num_queued == 0
    run(go())


def test_expected_wait_over_the_limit_is_refused_at_once():
    ctl, clock = controller([], capacity=1, max_queue_wait_s=10.0)

    async def go():
        for _ in range(8):  # evidence: one slot every 20 s
            ticket = await admit(ctl, "default", 0, 1, 0)
            clock.now_s += 20.0
            ctl.release(ticket, 1, 0)
        await admit(ctl, "default", 0, 1, 0)
        with pytest.raises(RateLimitError) as info:
            await admit(ctl, "default", 0, 1, 0)
        assert info.value.code == "overloaded"
        assert info.value.retry_after_s == pytest.approx(20.0, rel=0.15)
    run(go())


def test_a_burst_is_not_refused_by_a_rate_estimate_that_starts_at_zero_or_idles_to_zero():
    """Issue 16, finding 5: the release-rate estimate started at 0 and grew slowly, so a burst
    the backends cleared in seconds was told to retry in 2,318 s; after an idle spell it fell
    to ~0 and refused everything."""
    ctl, clock = controller([], capacity=10, max_queue_wait_s=10.0)

    async def go():
        admitted = [asyncio.ensure_future(admit(ctl, "default", 0, 1, 0)) for _ in range(200)]
        await asyncio.sleep(0)
        done = [t.result() for t in admitted if t.done()]
        for i in range(50):  # the backends release 100 slots/s
            clock.now_s += 0.01
            ctl.release(done[i], 1, 1)
            await asyncio.sleep(0)
            done += [t.result() for t in admitted if t.done() and t.result() not in done]
        late = [asyncio.ensure_future(admit(ctl, "default", 0, 1, 0)) for _ in range(50)]
        await asyncio.sleep(0)
        assert not [t for t in late if t.done() and t.exception()], "refused at 100 slots/s"
        while ctl.num_active:  # everything finishes
            clock.now_s += 0.01
            ticket = next(t.result() for t in admitted + late
                          if t.done() and not t.result().is_released)
            ctl.release(ticket, 1, 1)
            await asyncio.sleep(0)
        clock.now_s += 1000.0  # an idle spell, then a burst and one slow release
        burst = [asyncio.ensure_future(admit(ctl, "default", 0, 1, 0)) for _ in range(30)]
        await asyncio.sleep(0)
        clock.now_s += 1.0
        ctl.release(burst[0].result(), 1, 1)
        newcomer = asyncio.ensure_future(admit(ctl, "default", 0, 1, 0))
        await asyncio.sleep(0)
        assert not (newcomer.done() and newcomer.exception()), "refused after an idle spell"
        for t in [*burst, newcomer]:
            t.cancel()
    run(go())
    assert ctl.metrics.rejected.get(("default", "overloaded")) == 0


def test_no_backend_able_to_serve_is_a_503_at_once_and_waiting_requests_leave():
    """Issue 16, finding 5: with every backend down, requests waited 60 s for a 429."""
    ctl, clock = controller([], capacity=1, max_queue_wait_s=60.0)
    down: dict[str, float | None] = {"s": None}
    ctl.unavailable_s = lambda: down["s"]

    async def go():
        running = await admit(ctl, "default", 0, 1, 0)
        waiting = asyncio.ensure_future(admit(ctl, "default", 0, 1, 0))
        await asyncio.sleep(0)
        down["s"] = 4.0
        ctl.dispatch_waiting()  # what the pool calls after its health checks
        with pytest.raises(ServiceUnavailableError) as info:
            await asyncio.wait_for(waiting, 0.1)
        assert info.value.retry_after_s == 4.0 and ctl.num_queued == 0
        with pytest.raises(ServiceUnavailableError):
            await asyncio.wait_for(admit(ctl, "default", 0, 1, 0), 0.1)
        ctl.release(running, 1, 0)
    run(go())
    assert ctl.metrics.rejected.get(("default", "no_backend")) == 2


def test_token_limits_hold_under_concurrency_by_reserving_an_estimate():
    """Issue 16, finding 7: 106 concurrent chats without max_tokens made 21,200 tokens
    against a 2,000 tokens/min limit (only their prompts were charged at admission)."""
    ctl, clock = controller([TenantConfig(name="a", max_tokens_per_min=2000)], capacity=200)

    async def go():
        admitted, refused = [], 0
        for _ in range(106):  # all at once, none with max_tokens; each will generate 200
            try:
                admitted.append(await admit(ctl, "a", 0, 10, 0))
            except RateLimitError:
                refused += 1
        for ticket in admitted:
            ctl.release(ticket, 10, 200)
        generated = 200 * len(admitted) + 10 * len(admitted)
        assert generated <= 2000 * 1.05 and refused == 106 - len(admitted)
        assert ctl.tenants.output_estimate("a") > 150  # it learned what the tenant generates
    run(go())


def test_a_tenant_concurrency_cap_refuses_the_next_and_frees_on_release():
    ctl, _ = controller([TenantConfig(name="a", max_concurrent_requests=2),
                         TenantConfig(name="b")], capacity=1)

    async def go():
        first = await admit(ctl, "a", 0, 1, 1)
        queued = asyncio.ensure_future(admit(ctl, "a", 0, 1, 1))  # queued counts too
        await asyncio.sleep(0)
        with pytest.raises(RateLimitError) as info:
            await admit(ctl, "a", 0, 1, 1)
        assert info.value.code == "concurrency_limit_exceeded"
        other = asyncio.ensure_future(admit(ctl, "b", 0, 1, 1))  # other tenants are not capped
        await asyncio.sleep(0)
        assert not other.done() and ctl.num_queued == 2
        queued.cancel()  # its client left
        await asyncio.gather(queued, return_exceptions=True)
        third = asyncio.ensure_future(admit(ctl, "a", 0, 1, 1))  # a place is free again
        await asyncio.sleep(0)
        assert not third.done() or third.exception() is None
        ctl.release(first, 1, 1)
        for t in (other, third):
            t.cancel()
    run(go())


def test_a_tenant_without_api_keys_is_refused_at_startup():
    """Issue 16, finding 8: such a config made every request a 500 while /health said ok."""
    with pytest.raises(ValueError, match="no api_keys"):
        TenantTable.build([TenantConfig(name="a")], 0.0)


def test_priority_ceiling_clamps_and_429_has_retry_after_header():
    app, fakes = make_app(tenants=(
        TenantConfig(name="free", api_keys=("k1",), priority_ceiling=5, default_priority=7,
                     max_requests_per_min=1),))

    async def go():
        async with asgi_client(app) as c:
            h = {"authorization": "Bearer k1"}
            ok = await c.post("/v1/completions", headers=h,
                              json={"model": MODEL, "prompt": "x", "priority": -10})
            limited = await c.post("/v1/completions", headers=h,
                                   json={"model": MODEL, "prompt": "x"})
            return ok, limited
    ok, limited = run(go())
    assert ok.status_code == 200
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) == 60
    assert limited.json()["error"]["type"] == "rate_limit_error"


def test_priority_is_clamped_to_the_ceiling():
    cfg = TenantConfig(name="t", priority_ceiling=3, default_priority=4)
    assert (cfg.clamp_priority(None), cfg.clamp_priority(0), cfg.clamp_priority(9)) == (4, 3, 9)
    with pytest.raises(ValueError):
        TenantConfig(name="t", priority_ceiling=3, default_priority=1)
