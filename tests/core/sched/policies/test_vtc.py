"""VTC: least-served tenant first, counters lifted on return, bounded service gap (FCFS's grows)."""

import pytest
from tests.core.sched.policies.tracing import run_trace
from tests.factories import FakeExecutor, make_request, make_scheduler

from shunter.core.clock import ManualClock
from shunter.core.sched.policies.service import ServiceMeter
from shunter.core.sched.registry import make_policy
from shunter.metrics import summarize


def test_meter_charges_prompt_once_and_each_output_token_once():
    meter = ServiceMeter()  # w_in 1, w_out 2
    r = make_request("a", num_prompt_tokens=10)
    assert meter.charge(r, 8) == 8  # prompt positions 0..7
    r.num_computed_tokens = 8
    assert meter.charge(r, 2) == 2 + 2  # positions 8, 9; position 9 samples output 1
    r.num_computed_tokens = 10
    r.num_output_tokens = 2
    assert meter.charge(r, 1) == 2  # decode: position 10 samples output 2
    # recompute after preemption: positions 0..10 were charged; only 11 (sampling output 3) is new
    r.num_computed_tokens = 0
    r.num_output_tokens = 2
    assert meter.charge(r, 12) == 2


def test_meter_skipping_cached_tokens_charges_only_what_is_computed():
    vtc, dlpm = ServiceMeter(), ServiceMeter(skip_cached=True)
    r = make_request("a", num_prompt_tokens=10)
    r.num_computed_tokens = 8  # 8 prompt tokens were prefix-cache hits
    assert vtc.charge(r, 2) == 10 + 2  # the whole prompt, then the first output
    assert dlpm.charge(r, 2) == 2 + 2


def flood(num_heavy: int) -> list:
    """`heavy` queues `num_heavy` requests at t=0; `light` is backlogged from t=0.5 on."""
    heavy = [make_request(f"h{i}", num_prompt_tokens=8, tenant="heavy", arrival_s=0.0)
             for i in range(num_heavy)]
    light = [make_request(f"l{i}", num_prompt_tokens=8, tenant="light", arrival_s=0.5 + i * 0.01)
             for i in range(8)]
    return heavy + light


def service_gap(policy: str, num_heavy: int) -> float:
    clock = ManualClock()
    s = make_scheduler(clock=clock, policy=policy, max_num_seqs=2, num_blocks=64)
    requests = flood(num_heavy)
    records = run_trace(s, FakeExecutor({r.request_id: 8 for r in requests}), clock, requests)
    return summarize(records.values()).fairness.max_service_gap


def test_vtc_bounds_the_service_gap_that_fcfs_lets_grow_with_the_flood():
    fcfs = [service_gap("fcfs", n) for n in (10, 40)]
    vtc = [service_gap("vtc", n) for n in (10, 40)]
    assert fcfs[1] > 3 * fcfs[0]  # grows with the heavy tenant's backlog: unbounded
    assert vtc[0] == vtc[1]  # independent of the backlog
    # one request's service is 8 + 2 * 8 = 24; two run at once
    assert vtc[1] <= 2 * 2 * 24
    assert fcfs[1] > 10 * vtc[1]


def test_tenants_alternate_by_counter_and_fcfs_within_a_tenant():
    clock = ManualClock()
    s = make_scheduler(clock=clock, policy="vtc", max_num_seqs=1)
    reqs = [make_request("a0", tenant="a", num_prompt_tokens=4, arrival_s=0.0),
            make_request("a1", tenant="a", num_prompt_tokens=4, arrival_s=0.1),
            make_request("b0", tenant="b", num_prompt_tokens=4, arrival_s=0.2),
            make_request("b1", tenant="b", num_prompt_tokens=4, arrival_s=0.3)]
    for r in reqs:
        s.add_request(r)
    ex = FakeExecutor({r.request_id: 2 for r in reqs})
    order = []
    while s.has_work:
        out = s.schedule()
        order += [n.request_id for n in out.new_requests]
        s.update(out, ex.execute(out))
    assert order == ["a0", "b0", "a1", "b1"]


def test_a_returning_tenant_is_lifted_to_the_least_served_waiting_tenant():
    policy = make_policy("vtc")
    queue = policy.make_queue()
    queue.add(make_request("a0", tenant="a"))
    queue.add(make_request("b0", tenant="b"))
    queue.peek()  # lifts apply at a decision
    policy.counters.update({"a": 100.0, "b": 40.0, "idle": 5.0})  # as if a and b were served
    queue.add(make_request("i0", tenant="idle"))
    assert policy.counter("idle") == 5.0  # the lift applies at the next decision
    assert queue.peek().request_id == "b0"  # b (40) has waited longer than the lifted idle (40)
    assert policy.counter("idle") == 40.0  # lifted: no banking service while away
    policy.counters["idle"] = 41.0
    queue.add(make_request("i1", tenant="idle"))
    queue.peek()
    assert policy.counter("idle") == 41.0  # already waiting: no lift
    queue.add(make_request("fresh", tenant="new"))
    queue.peek()
    assert policy.counter("new") == 40.0
    # with nothing waiting, a returning tenant is lifted to the last one to leave
    popped = [queue.pop() for _ in range(5)]
    assert len(queue) == 0 and popped[-1].tenant == "a"  # the most served goes last
    last = policy.counter("a")
    queue.add(make_request("z0", tenant="z"))
    queue.peek()
    assert policy.counter("z") == last


def test_preempted_requests_coming_back_lift_nothing():
    policy = make_policy("vtc")
    queue = policy.make_queue()
    queue.add(make_request("a0", tenant="a"))
    queue.peek()
    policy.counters.update({"a": 100.0, "b": 10.0})
    back = make_request("b0", tenant="b")
    back.num_preemptions = 1
    queue.add(back)
    assert policy.counter("b") == 10.0
    assert queue.peek() is back


def test_weights_scale_the_counters():
    policy = make_policy("vtc", tenant_weights={"gold": 2.0})
    r = make_request("g", tenant="gold", num_prompt_tokens=10)
    policy.on_scheduled(r, 10, 0.0)  # 10 prompt tokens + 1 sampled output = 12 service
    assert policy.counter("gold") == 6.0
    with pytest.raises(ValueError, match="tenant weight"):
        make_policy("vtc", tenant_weights={"x": 0})


def test_prompts_are_charged_on_admission_and_the_rest_as_computed():
    vtc, dlpm = ServiceMeter(), ServiceMeter(skip_cached=True)
    r = make_request("a", num_prompt_tokens=10)
    r.num_computed_tokens = 8  # prefix-cache hits taken at admission
    assert vtc.charge_admitted(r) == 9  # all but the last prompt position, hits included
    assert dlpm.charge_admitted(r) == 1  # only position 8 is computed (the last is left)
    assert vtc.charge(r, 2) == 1 + 2 == dlpm.charge(r, 2)  # position 9 samples the first output
    assert vtc.charge_admitted(r) == 0  # readmission after a preemption charges nothing new
