"""read_me: expert-aware admission order (Read-ME), FCFS without profiles, bounded bypassing."""

import random

import pytest
from tests.factories import FakeExecutor, add_all, make_request, make_scheduler, run_steps

from shunter.core.clock import ManualClock
from shunter.core.sched.policies.read_me import ReadMePolicy
from shunter.core.sched.registry import make_policy
from shunter.core.types import ExpertProfile

A = ExpertProfile((0.45, 0.45, 0.05, 0.05))  # topic A: experts 0-1
B = ExpertProfile((0.05, 0.05, 0.45, 0.45))  # topic B: experts 2-3


def req(i: int, profile: ExpertProfile | None = None, arrival_s: float | None = None):
    return make_request(f"r{i}", arrival_s=float(i) if arrival_s is None else arrival_s,
                        expert_profile=profile)


def drain(queue, policy, requests, *, finish_each: bool = False) -> list[str]:
    order = []
    for r in requests:
        queue.add(r)
    while len(queue):
        r = queue.pop()
        order.append(r.request_id)
        if finish_each:
            policy.on_finished(r, 0.0)
    return order


def test_without_profiles_the_order_is_fcfs():
    policy = ReadMePolicy(lookahead=4)
    requests = [req(i) for i in (3, 0, 2, 1, 5, 4)]
    assert drain(policy.make_queue(), policy, requests) == ["r0", "r1", "r2", "r3", "r4", "r5"]
    # profiles, but nothing profiled running: the oldest goes first, then its topic
    policy = ReadMePolicy(lookahead=8)
    requests = [req(0, A), req(1, B), req(2, A), req(3, B), req(4, A)]
    assert drain(policy.make_queue(), policy, requests) == ["r0", "r2", "r4", "r1", "r3"]


def test_admissions_follow_the_experts_that_run():
    policy = ReadMePolicy(lookahead=8)
    queue = policy.make_queue()
    running = req(0, B)
    queue.add(running)
    assert queue.pop() is running  # B runs
    for r in (req(1, A), req(2, A), req(3, B), req(4, A), req(5, B)):
        queue.add(r)
    assert [queue.pop().request_id for _ in range(2)] == ["r3", "r5"]  # B's first
    policy.on_finished(running, 0.0)
    assert queue.peek().request_id == "r1"  # B's still run (r3, r5): A's only then
    assert queue.num_bypassed(queue.peek()) == 2


def test_the_window_bounds_how_far_ahead_it_looks():
    policy = ReadMePolicy(lookahead=2)
    queue = policy.make_queue()
    queue.add(req(0, B))
    queue.pop()
    for r in (req(1, A), req(2, A), req(3, B)):
        queue.add(r)
    assert queue.pop().request_id == "r1"  # r3 (B) is beyond the 2 oldest


def test_nothing_waits_more_than_max_bypass_admissions_past_its_turn():
    policy = ReadMePolicy(lookahead=16, max_bypass=3)
    queue = policy.make_queue()
    queue.add(req(0, B))
    queue.pop()  # B keeps running
    lone_a = req(1, A)
    queue.add(lone_a)
    for i in range(2, 12):
        queue.add(req(i, B))
    order = [queue.pop().request_id for _ in range(len(queue))]
    assert order.index("r1") == 3  # passed over exactly max_bypass times, then first


def test_a_long_random_run_starves_nobody_and_repeats_exactly():
    def run(seed: int) -> tuple[list[str], int]:
        rng = random.Random(seed)
        policy = ReadMePolicy(lookahead=8, max_bypass=5)
        queue = policy.make_queue()
        running, order, worst, n = [], [], 0, 0
        turn: dict[str, int] = {}
        for _ in range(400):
            for _ in range(rng.randint(0, 2)):
                r = req(n, rng.choice([A, B, None]))
                turn[r.request_id] = n
                queue.add(r)
                n += 1
            if running and rng.random() < 0.5:
                policy.on_finished(running.pop(rng.randrange(len(running))), 0.0)
            if len(queue) and len(running) < 6:
                r = queue.pop()
                running.append(r)
                # how many admitted later-arriving requests went ahead of it
                worst = max(worst, sum(1 for rid in order if turn[rid] > turn[r.request_id]))
                order.append(r.request_id)
        return order, worst
    order, worst = run(1)
    assert run(1) == (order, worst)
    # a later arrival goes ahead only from the window, which then holds the request: at most
    # `max_bypass` of them; and the order did move (it is not FCFS)
    assert 0 < worst <= 5


def test_preempted_requests_queue_again_by_arrival():
    policy = ReadMePolicy()
    queue = policy.make_queue()
    first, second = req(0, A), req(1, B)
    queue.add(first)
    queue.add(second)
    assert queue.pop() is first
    queue.add(first)  # preempted: back, no longer running
    assert queue.peek() is first and len(queue) == 2
    queue.remove(first)
    policy.on_finished(first, 0.0)
    assert list(queue) == [second]


def test_in_a_scheduler_it_admits_by_expert_and_finishes_everything():
    clock = ManualClock()
    scheduler = make_scheduler(policy="read_me", clock=clock, max_num_seqs=2,
                               max_num_batched_tokens=64)
    requests = [req(0, A), req(1, B), req(2, B), req(3, A), req(4, A), req(5, B)]
    add_all(scheduler, requests)
    executor = FakeExecutor({r.request_id: 6 for r in requests})
    outputs = run_steps(scheduler, executor, clock)
    first_two = [c.request_id for c in executor.outputs[0].chunks]
    assert first_two == ["r0", "r3"]  # r0's topic, not r1 (B), joins it
    assert sum(1 for o in outputs if o.finish_reason is not None) == 6


@pytest.mark.parametrize(("params", "message"), [
    ({"lookahead": 0}, "lookahead"), ({"max_bypass": 1.5}, "max_bypass must be a whole number"),
    ({"window": 3}, "window"),
])
def test_bad_parameters_name_themselves(params, message):
    with pytest.raises(ValueError, match=message):
        make_policy("read_me", **params)
