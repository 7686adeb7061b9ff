"""vLLM's max_loras in the core scheduler: never more distinct adapters than that in a step."""

import random

import pytest
from tests.factories import FakeExecutor, make_request, make_scheduler

from shunter.core.clock import ManualClock
from shunter.core.sched.config import SchedulerConfig
from shunter.core.sched.lora import num_distinct_loras


def requests_with_adapters(n: int, num_adapters: int, seed: int) -> list:
    rng = random.Random(seed)
    return [make_request(f"r{i}", num_prompt_tokens=rng.choice([4, 20, 60]),
                         lora_id=None if rng.random() < 0.2 else f"a{rng.randrange(num_adapters)}")
            for i in range(n)]


@pytest.mark.parametrize(("policy", "max_loras"), [("fcfs", 1), ("fcfs", 3), ("vtc", 2),
                                                   ("priority", 2)])
def test_no_step_and_no_running_set_exceeds_max_loras(policy, max_loras):
    clock = ManualClock()
    scheduler = make_scheduler(num_blocks=200, policy=policy, clock=clock, max_loras=max_loras,
                               max_num_seqs=16, max_num_batched_tokens=64)
    requests = requests_with_adapters(60, 6, seed=3)
    by_id = {r.request_id: r for r in requests}
    for r in requests:
        scheduler.add_request(r)
    executor = FakeExecutor({r.request_id: 1 + i % 7 for i, r in enumerate(requests)})
    seen_adapters = set()
    for _ in range(2000):
        if not scheduler.has_work:
            break
        output = scheduler.schedule()
        step = [by_id[c.request_id] for c in output.chunks]
        assert num_distinct_loras(step) <= max_loras
        assert num_distinct_loras(scheduler.running) <= max_loras
        seen_adapters |= {r.lora_id for r in step}
        result = executor.execute(output)
        clock.advance_to(clock.now() + result.duration_s)
        scheduler.update(output, result)
    assert not scheduler.has_work  # everyone finished: nobody starved behind the limit
    assert len(seen_adapters - {None}) == 6


def test_a_request_whose_adapter_does_not_fit_is_passed_over_and_keeps_its_place():
    clock = ManualClock()
    scheduler = make_scheduler(num_blocks=100, clock=clock, max_loras=1)
    a, b, c = (make_request("a", lora_id="x"), make_request("b", lora_id="y"),
               make_request("c", lora_id="x"))
    d = make_request("d")  # the base model needs no slot
    for r in (a, b, c, d):
        scheduler.add_request(r)
    executor = FakeExecutor({"a": 1, "b": 1, "c": 1, "d": 1})
    first = scheduler.schedule()
    assert [ch.request_id for ch in first.chunks] == ["a", "c", "d"]  # b skipped, not dropped
    clock.advance_to(1.0)
    scheduler.update(first, executor.execute(first))
    second = scheduler.schedule()
    assert [ch.request_id for ch in second.chunks] == ["b"]  # x left the GPU batch: y fits
    assert len(scheduler.waiting) == 0


def test_a_queue_that_cannot_pass_over_makes_the_blocked_head_wait():
    clock = ManualClock()  # vtc's queue charges on pop: the head blocks the step instead
    scheduler = make_scheduler(num_blocks=100, policy="vtc", clock=clock, max_loras=1)
    for r in (make_request("a", lora_id="x"), make_request("b", lora_id="y"),
              make_request("c", lora_id="x")):
        scheduler.add_request(r)
    first = scheduler.schedule()
    assert [ch.request_id for ch in first.chunks] == ["a"]
    assert len(scheduler.waiting) == 2


def test_no_limit_means_no_check():
    scheduler = make_scheduler(num_blocks=100)
    assert scheduler.lora is None
    for i in range(5):
        scheduler.add_request(make_request(f"r{i}", lora_id=f"a{i}"))
    assert len(scheduler.schedule().chunks) == 5


def test_a_request_passed_over_keeps_its_place_ahead_of_later_ones():
    scheduler = make_scheduler(num_blocks=100, max_loras=1, max_num_seqs=2)
    for r in (make_request("a", lora_id="x"), make_request("b", lora_id="y"),
              make_request("e", lora_id="x"), make_request("f")):  # all arrive at 0: FIFO ties
        scheduler.add_request(r)
    assert [ch.request_id for ch in scheduler.schedule().chunks] == ["a", "e"]
    assert [r.request_id for r in scheduler.waiting] == ["b", "f"]  # not re-queued behind f


def test_a_detached_request_attaches_only_beside_its_adapter_or_a_free_slot():
    scheduler = make_scheduler(num_blocks=100, max_loras=1)
    scheduler.add_request(make_request("a", lora_id="x"))
    scheduler.schedule()
    moved = make_request("m", lora_id="y")
    assert not scheduler.lora.can_join(moved, scheduler.running)
    assert scheduler.lora.can_join(make_request("n", lora_id="x"), scheduler.running)


def test_bad_max_loras_is_refused_by_name():
    with pytest.raises(ValueError, match="max_loras"):
        SchedulerConfig(num_blocks=10, max_loras=-1)
