"""AIOS round robin: a call that used a slice goes behind calls that used fewer; a later short
call displaces a long one at its slice boundary; equal rounds never displace each other."""

import pytest
from tests.core.sched.policies.tracing import run_trace
from tests.factories import FakeExecutor, make_request, make_scheduler

from shunter.core.clock import ManualClock
from shunter.core.sched.policies.aios_rr import AiosRrPolicy
from shunter.core.sched.registry import make_policy


def finish_times(policy: str, calls, lengths, **params) -> dict[str, float]:
    clock = ManualClock()
    scheduler = make_scheduler(clock=clock, policy=policy, policy_params=params or None,
                               max_num_seqs=1)
    requests = [make_request(rid, num_prompt_tokens=8, arrival_s=t) for rid, t in calls]
    records = run_trace(scheduler, FakeExecutor(lengths), clock, requests)
    return {rid: record.token_times_s[-1] for rid, record in records.items()}


def test_equal_calls_take_turns_slice_by_slice():
    calls = [("a", 0.0), ("b", 0.0), ("c", 0.0)]
    lengths = {"a": 20, "b": 20, "c": 20}
    rr = finish_times("aios_rr", calls, lengths, time_slice_tokens=4)
    fifo = finish_times("fcfs", calls, lengths)
    assert fifo["a"] == 20 and fifo["c"] == 60  # FIFO: one after another
    # round robin: all three are in their last slice together, so they finish within one
    # round of three slices of each other (plus a step per re-admission)
    assert max(rr.values()) - min(rr.values()) <= 3 * 4 + 3
    assert min(rr.values()) > 40


def test_a_later_short_call_displaces_a_long_one_that_used_its_slice():
    calls = [("long", 0.0), ("short", 10.0)]
    lengths = {"long": 60, "short": 3}
    rr = finish_times("aios_rr", calls, lengths, time_slice_tokens=4)
    fifo = finish_times("fcfs", calls, lengths)
    assert rr["short"] <= 14.0 < 60 < fifo["short"]


def test_a_call_is_not_displaced_by_one_in_the_same_round():
    p = AiosRrPolicy(time_slice_tokens=4)
    running, waiting = make_request("r"), make_request("w", arrival_s=1.0)
    for _ in range(3):
        running.append_output(7)
    assert p.round(running) == 0 and not p.should_preempt(waiting, running, 5.0)
    running.append_output(7)
    assert p.round(running) == 1 and p.should_preempt(waiting, running, 5.0)
    assert p.steps_until_reorder([running]) == 4
    urgent = make_request("u", priority=0)
    assert not p.should_preempt(running, urgent, 5.0)  # priorities first


@pytest.mark.parametrize("bad", [0, -1, 2.5, float("nan"), True])
def test_time_slice_must_be_a_positive_whole_number(bad):
    with pytest.raises(ValueError, match="time_slice_tokens"):
        make_policy("aios_rr", time_slice_tokens=bad)
