"""The gateway tier's queue: a core policy's order and charging, with nothing running."""

import pytest
from tests.factories import FakeExecutor, add_all, make_request, make_scheduler, run_steps

from shunter.core.sched.gateway_queue import GatewayQueue, gateway_refusal
from shunter.core.sched.registry import POLICIES, make_policy
from shunter.core.types import RequestStatus

GATEWAY_POLICIES = sorted(n for n in POLICIES if make_policy(n).requires_engine is None)


def test_engine_only_policies_are_refused_with_where_they_run():
    for name in ("mlfq", "fastswitch", "sarathi", "aios_rr", "dynasor"):
        with pytest.raises(ValueError) as info:
            GatewayQueue(make_policy(name))
        message = str(info.value)
        assert name in message and "engine" in message and "--policy" in message
    assert GATEWAY_POLICIES == ["dlpm", "fcfs", "lpm", "ltr", "parrot", "plas", "priority", "read_me",
                                "sjf", "skippredict", "vtc"]
    assert all(gateway_refusal(make_policy(n)) is None for n in GATEWAY_POLICIES)


def _drain(queue: GatewayQueue, requests, *, outputs: dict[str, int] | None = None) -> list[str]:
    """Add all, then dispatch one at a time, each finishing before the next starts."""
    for r in requests:
        queue.add(r)
    order = []
    now = 0.0
    while len(queue):
        request = queue.pop(now)
        order.append(request.request_id)
        now += 1.0
        queue.finish(request, None, (outputs or {}).get(request.request_id, 4), now)
    return order


def test_fcfs_priority_and_sjf_orders():
    reqs = [make_request(f"r{i}", arrival_s=float(i), priority=p)
            for i, p in enumerate([2, 0, 1])]
    assert _drain(GatewayQueue(make_policy("fcfs")), reqs) == ["r0", "r1", "r2"]
    reqs = [make_request(f"r{i}", arrival_s=float(i), priority=p)
            for i, p in enumerate([2, 0, 1])]
    assert _drain(GatewayQueue(make_policy("priority")), reqs) == ["r1", "r2", "r0"]
    reqs = [make_request(f"r{i}", arrival_s=float(i)) for i in range(3)]
    for r, predicted in zip(reqs, [300.0, 10.0, None], strict=True):
        r.predicted_output_tokens = predicted
    # no prediction counts as sjf's unknown_output_tokens (256)
    assert _drain(GatewayQueue(make_policy("sjf")), reqs) == ["r1", "r2", "r0"]


def test_vtc_charges_prompt_and_outputs_exactly_as_an_engine_run_does():
    """The same requests run to completion in an engine scheduler under VTC and through the
    gateway tier leave the same per-tenant counters."""
    lengths = {"a0": (30, 7), "a1": (12, 1), "b0": (50, 20)}
    engine = make_scheduler(policy="vtc", num_blocks=256)
    clock = engine.clock
    add_all(engine, [make_request(rid, num_prompt_tokens=p, num_output_tokens=o,
                                  tenant=rid[0]) for rid, (p, o) in lengths.items()])
    run_steps(engine, FakeExecutor({rid: o for rid, (_, o) in lengths.items()}), clock)
    queue = GatewayQueue(make_policy("vtc"))
    _drain(queue, [make_request(rid, num_prompt_tokens=p, tenant=rid[0])
                   for rid, (p, _) in lengths.items()],
           outputs={rid: o for rid, (_, o) in lengths.items()})
    assert queue.policy.counters == engine.policy.counters == {
        "a": 30 + 2 * 7 + 12 + 2 * 1, "b": 50 + 2 * 20}


def test_vtc_serves_the_least_served_backlogged_tenant_and_lifts_returning_ones():
    queue = GatewayQueue(make_policy("vtc", tenant_weights={"b": 2.0}))
    reqs = [make_request(f"{t}{i}", arrival_s=float(i), tenant=t, num_prompt_tokens=100)
            for i in range(6) for t in "ab"]
    order = _drain(queue, reqs, outputs={r.request_id: 100 for r in reqs})
    # each request is 300 units of service; b's weight 2 makes its share 150
    assert [rid[0] for rid in order[:9]].count("b") == 6, order
    policy = queue.policy
    counters = dict(policy.counters)
    late = make_request("c0", tenant="c", num_prompt_tokens=10)
    queue.add(late)
    queue.add(make_request("a9", tenant="a", num_prompt_tokens=10, arrival_s=100.0))
    assert queue.peek() is not None
    assert policy.counters["c"] >= min(counters.values())  # no credit for having been away


def test_charges_settle_on_the_backends_larger_prompt_count():
    queue = GatewayQueue(make_policy("vtc"))
    request = make_request("r", num_prompt_tokens=10, tenant="t")
    queue.add(request)
    queue.pop(0.0)
    assert queue.policy.counters["t"] == 9  # the prompt but its last position, at dispatch
    queue.finish(request, 14, 3, 1.0)  # the backend counted 14 prompt tokens, made 3 outputs
    assert queue.policy.counters["t"] == 14 + 2 * 3
    assert request.status == RequestStatus.FINISHED_STOPPED


def test_a_request_that_leaves_before_dispatch_is_charged_nothing():
    queue = GatewayQueue(make_policy("plas"))
    request = make_request("r", num_prompt_tokens=10, program_id="p")
    queue.add(request)
    queue.remove(request, 1.0)
    assert len(queue) == 0 and queue.policy.service == {}
    assert request.status == RequestStatus.FINISHED_ABORTED


def test_plas_at_the_gateway_ranks_calls_by_their_programs_finished_service():
    queue = GatewayQueue(make_policy("plas", first_level_service=100.0, aging_s=None))
    long_call = make_request("long0", num_prompt_tokens=50, program_id="long", arrival_s=0.0)
    queue.add(long_call)
    queue.finish(queue.pop(0.0), None, 200, 1.0)  # program "long" attained 450 > 100
    assert queue.policy.service["long"] == 50 + 2 * 200
    later = [make_request("long1", num_prompt_tokens=5, program_id="long", arrival_s=2.0),
             make_request("short0", num_prompt_tokens=5, program_id="short", arrival_s=3.0)]
    assert _drain(queue, later) == ["short0", "long1"]


def test_dlpm_at_the_gateway_prefers_the_longest_cached_prefix_among_tenants_in_credit():
    hits = {"cold": 0, "hot": 64}
    queue = GatewayQueue(make_policy("dlpm"), probe=lambda r: hits[r.request_id])
    queue.add(make_request("cold", arrival_s=0.0, tenant="a"))
    queue.add(make_request("hot", arrival_s=1.0, tenant="b"))
    assert queue.pop(0.0).request_id == "hot"


@pytest.mark.parametrize("name", GATEWAY_POLICIES)
def test_every_gateway_policy_drains_a_mixed_queue_once_each(name):
    queue = GatewayQueue(make_policy(name), probe=lambda r: 0)
    reqs = [make_request(f"r{i}", arrival_s=float(i), tenant="ab"[i % 2], priority=i % 3,
                         program_id=f"p{i % 3}", num_prompt_tokens=1 + 7 * i)
            for i in range(12)]
    order = _drain(queue, reqs)
    assert sorted(order) == sorted(r.request_id for r in reqs)
    assert all(r.status == RequestStatus.FINISHED_STOPPED for r in reqs)
