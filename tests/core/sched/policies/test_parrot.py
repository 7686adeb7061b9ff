"""Parrot's application-centric order: an earlier application's later calls go before a later
application's first calls; FCFS interleaves them."""

import pytest
from tests.core.sched.policies.tracing import run_trace
from tests.factories import FakeExecutor, make_request, make_scheduler

from shunter.core.clock import ManualClock
from shunter.core.sched.registry import make_policy


def order(policy: str) -> list[str]:
    clock = ManualClock()
    scheduler = make_scheduler(clock=clock, policy=policy, max_num_seqs=1)
    requests = [make_request("a0", num_prompt_tokens=8, arrival_s=0.0, program_id="A"),
                make_request("b0", num_prompt_tokens=8, arrival_s=1.0, program_id="B"),
                make_request("b1", num_prompt_tokens=8, arrival_s=1.5, program_id="B"),
                make_request("a1", num_prompt_tokens=8, arrival_s=2.0, program_id="A")]
    records = run_trace(scheduler, FakeExecutor({"a0": 4, "b0": 4, "b1": 4, "a1": 4}), clock,
                        requests)
    return sorted(records, key=lambda rid: records[rid].token_times_s[0])


def test_an_applications_later_call_overtakes_a_later_application():
    assert order("fcfs") == ["a0", "b0", "b1", "a1"]
    assert order("parrot") == ["a0", "a1", "b0", "b1"]  # a1 is A's: A started first


def test_the_key_is_static_and_priorities_come_first():
    p = make_policy("parrot")
    late = make_request("x", arrival_s=9.0, program_id="A")
    first = make_request("y", arrival_s=3.0, program_id="A")
    urgent = make_request("z", arrival_s=10.0, program_id="C", priority=-1)
    assert p.order_key(first) == (0, 3.0, 3.0)
    assert p.order_key(late) == (0, 3.0, 9.0) == p.order_key(late)
    assert p.order_key(urgent) < p.order_key(first)


def test_max_apps_bounds_the_state():
    p = make_policy("parrot", max_apps=2)
    for k, app in enumerate("ABC"):
        p.order_key(make_request(app, arrival_s=float(k), program_id=app))
    assert p.order_key(make_request("a2", arrival_s=5.0, program_id="A")) == (0, 5.0, 5.0)
    with pytest.raises(ValueError, match="max_apps"):
        make_policy("parrot", max_apps=0)
