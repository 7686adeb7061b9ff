"""PLAS: calls ranked by their program's attained service, demotion, preemption, aging."""

import pytest
from tests.core.sched.policies.tracing import run_trace
from tests.factories import FakeExecutor, make_request, make_scheduler

from shunter.core.clock import ManualClock
from shunter.core.sched.policies.plas import program_of
from shunter.core.sched.registry import make_policy


def call(request_id: str, program: str | None, arrival_s: float = 0.0, **kw):
    return make_request(request_id, program_id=program, arrival_s=arrival_s, **kw)


def test_program_identity_falls_back_to_session_then_request():
    assert program_of(call("a", "prog")) == "prog"
    assert program_of(make_request("b", session_id="s")) == "s"
    assert program_of(make_request("c")) == "request:c"


def test_levels_follow_the_programs_attained_service():
    policy = make_policy("plas", first_level_service=100.0, level_ratio=2.0, num_levels=3)
    first = call("a0", "a", num_prompt_tokens=60)
    assert policy.level(first) == 0
    policy.on_scheduled(first, 60, 0.0)  # 60 prompt + 1 sampled output = 62
    assert policy.service["a"] == 62 and policy.level(first) == 0
    first.num_computed_tokens = 60
    policy.on_scheduled(first, 1, 0.0)
    policy.on_scheduled(call("a1", "a", num_prompt_tokens=40), 40, 0.0)  # another call, same program
    assert policy.service["a"] == 62 + 2 + 42
    assert policy.level(call("a2", "a")) == 1  # the program is demoted: all its calls are
    policy.service["a"] = 10_000.0
    assert policy.level(first) == 2  # the last level is open-ended


def test_a_waiting_call_falls_behind_when_its_program_crosses_a_level():
    policy = make_policy("plas", first_level_service=100.0, aging_s=None)
    queue = policy.make_queue()
    waiting_a, waiting_b = call("a9", "a", arrival_s=0.0), call("b9", "b", arrival_s=1.0)
    queue.add(waiting_a)
    queue.add(waiting_b)
    assert queue.peek() is waiting_a  # same level: the earlier arrival
    policy.on_scheduled(call("a0", "a", num_prompt_tokens=50), 50, 0.0)  # 52: still level 0
    assert queue.peek() is waiting_a
    policy.on_scheduled(call("a1", "a", num_prompt_tokens=60), 60, 0.0)  # 114: program a demoted
    assert policy.level(waiting_a) == 1
    assert queue.peek() is waiting_b
    assert [r.request_id for r in queue] == ["b9", "a9"]


def test_a_short_programs_call_overtakes_a_long_programs_older_call():
    clock = ManualClock()
    s = make_scheduler(clock=clock, policy="plas", policy_params={"first_level_service": 64.0},
                       max_num_seqs=1)
    # program "long" runs a first call; then its second call and a new program's call wait
    reqs = [call("long0", "long", 0.0, num_prompt_tokens=64),
            call("long1", "long", 0.5, num_prompt_tokens=8),
            call("short0", "short", 0.6, num_prompt_tokens=8)]
    ex = FakeExecutor({"long0": 8, "long1": 4, "short0": 4})
    run_trace(s, ex, clock, reqs)
    order = [n.request_id for o in ex.outputs for n in o.new_requests]
    # short0's program has no service: it preempts the running long0 (one seat), then long0
    # resumes before long1 (same program, earlier arrival)
    assert order == ["long0", "short0", "long0", "long1"]


def test_a_fresh_program_preempts_a_demoted_one_under_memory_pressure():
    clock = ManualClock()
    # 6 blocks of 4 tokens: the long call fills the cache as it grows
    s = make_scheduler(clock=clock, policy="plas", policy_params={"first_level_service": 16.0},
                       num_blocks=6, block_size=4, watermark=0.0)
    reqs = [call("long", "L", 0.0, num_prompt_tokens=8), call("new", "N", 3.0, num_prompt_tokens=12)]
    ex = FakeExecutor({"long": 12, "new": 2})
    records = run_trace(s, ex, clock, reqs)
    preempted = [rid for o in ex.outputs for rid in o.preempted_ids]
    assert preempted == ["long"]
    assert records["new"].finish_s < records["long"].finish_s
    policy = s.policy
    assert policy.should_preempt(call("x", "fresh"), call("y", "L"), 0.0)
    assert not policy.should_preempt(call("x", "L"), call("y", "fresh"), 0.0)


def test_aging_ends_starvation():
    policy = make_policy("plas", first_level_service=10.0, aging_s=5.0)
    policy.service["hog"] = 1e9  # the last level
    queue = policy.make_queue()
    old = call("old", "hog", arrival_s=0.0)
    queue.add(old)
    queue.add(call("fresh", "new", arrival_s=1.0))
    assert queue.peek().request_id == "fresh"
    late = call("late", "other", arrival_s=policy.num_levels * 5.0 + 1.0)
    queue.remove(queue.peek())
    queue.add(late)
    assert queue.peek() is old  # waited more than a level per aging_s: it goes before


def test_idle_programs_are_forgotten_beyond_the_cap():
    policy = make_policy("plas", max_idle_programs=1)
    for name in ("a", "b"):
        r = call(f"{name}0", name, num_prompt_tokens=4)
        policy.on_scheduled(r, 4, 0.0)
        policy.on_finished(r, 0.0)
    assert set(policy.service) == {"b"}


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="level_ratio"):
        make_policy("plas", level_ratio=1.0)
    with pytest.raises(ValueError, match="aging_s"):
        make_policy("plas", aging_s=0)


def test_heavy_tailed_programs_get_a_lower_mean_latency_than_under_fcfs():
    def mean_latency(policy: str) -> float:
        clock = ManualClock()
        s = make_scheduler(clock=clock, policy=policy, max_num_seqs=2,
                           policy_params={"first_level_service": 16.0} if policy == "plas" else None)
        reqs = [call(f"c{i}", f"p{i}", arrival_s=i * 2.0, num_prompt_tokens=4) for i in range(20)]
        lengths = {r.request_id: (200 if i % 5 == 0 else 4) for i, r in enumerate(reqs)}
        records = run_trace(s, FakeExecutor(lengths), clock, reqs)
        return sum(r.e2e_s for r in records.values()) / len(records)

    assert mean_latency("plas") < 0.5 * mean_latency("fcfs")


def test_steps_until_reorder_counts_to_the_next_level_and_refuses_inexact_weights():
    policy = make_policy("plas", first_level_service=100.0)
    a, b = call("a", "p"), call("b", "p")
    policy.service["p"] = 90.0
    # two running calls of p gain 2 x 2.0 a step: 90 -> 94 -> 98 -> 102 (level 1 after 3)
    assert policy.steps_until_reorder([a, b]) == 3
    assert policy.steps_until_reorder([a]) == 5  # 90 + 5 x 2 = 100 reaches the threshold
    assert make_policy("plas", output_weight=1.1).steps_until_reorder([a]) == 0
