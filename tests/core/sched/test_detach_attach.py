"""Moving a running request between schedulers: detach here, attach (or requeue) there."""

import pytest
from tests.factories import FakeExecutor, add_all, make_request, make_scheduler, run_steps

from shunter.core.clock import ManualClock
from shunter.core.sched import handover
from shunter.core.types import RequestStatus


def step(scheduler, executor, clock):
    out = scheduler.schedule()
    result = executor.execute(out)
    clock.advance_to(clock.now() + result.duration_s)
    return out, scheduler.update(out, result)


def test_a_detached_request_continues_on_another_scheduler_with_the_same_tokens():
    clock = ManualClock()
    src, dst = make_scheduler(clock=clock), make_scheduler(clock=clock)
    add_all(src, [make_request("a", num_prompt_tokens=10)])
    ex = FakeExecutor({"a": 6})
    step(src, ex, clock)  # prefill: 10 computed, first token sampled
    step(src, ex, clock)  # one decode: 11 computed, 2 tokens
    free_before = src.kv.num_free_blocks
    request = handover.detach(src, "a")
    assert (request.num_computed_tokens, request.num_output_tokens) == (11, 2)
    assert not src.has_work and src.kv.num_free_blocks == free_before + 3
    assert request.block_ids == []
    assert handover.attach(dst, request)
    assert len(request.block_ids) == 3 and request.num_published_blocks == 2  # 11 tokens, bs 4
    out, _ = step(dst, ex, clock)
    assert [(c.request_id, c.num_computed_tokens, c.num_scheduled_tokens) for c in out.chunks] \
        == [("a", 11, 1)]  # decodes on: the next token, no recompute
    outputs = run_steps(dst, ex, clock)
    assert outputs[-1].finish_reason is not None and request.num_output_tokens == 6
    dst.kv.pool.check_invariants()
    src.kv.pool.check_invariants()


def test_attach_refuses_without_room_and_changes_nothing():
    clock = ManualClock()
    src, dst = make_scheduler(clock=clock), make_scheduler(clock=clock, num_blocks=3)
    add_all(src, [make_request("a", num_prompt_tokens=14)])
    step(src, FakeExecutor(), clock)
    request = handover.detach(src, "a")  # 14 computed -> 4 blocks
    assert not handover.can_attach(dst, request)
    assert not handover.attach(dst, request)
    assert request.block_ids == [] and not dst.has_work and dst.kv.num_free_blocks == 3


def test_attach_refuses_when_the_batch_is_full():
    clock = ManualClock()
    src, dst = make_scheduler(clock=clock), make_scheduler(clock=clock, max_num_seqs=1)
    add_all(src, [make_request("a")])
    add_all(dst, [make_request("b")])
    ex = FakeExecutor()
    step(src, ex, clock)
    step(dst, ex, clock)
    assert not handover.attach(dst, handover.detach(src, "a"))


def test_requeue_recomputes_and_keeps_the_tokens_already_sampled():
    clock = ManualClock()
    src, dst = make_scheduler(clock=clock), make_scheduler(clock=clock)
    add_all(src, [make_request("a", num_prompt_tokens=8)])
    ex = FakeExecutor({"a": 4})
    step(src, ex, clock)
    step(src, ex, clock)
    request = handover.detach(src, "a")
    handover.requeue(dst, request)
    assert request.status == RequestStatus.PREEMPTED and request.num_preemptions == 1
    out, _ = step(dst, ex, clock)
    assert [(c.request_id, c.num_computed_tokens, c.num_scheduled_tokens) for c in out.chunks] \
        == [("a", 0, 10)]  # prompt + 2 outputs recomputed, sampling the third token
    run_steps(dst, ex, clock)
    assert request.num_output_tokens == 4


def test_detach_needs_a_running_request_and_attach_a_new_id():
    clock = ManualClock()
    s = make_scheduler(clock=clock)
    add_all(s, [make_request("a")])
    with pytest.raises(ValueError, match="not running"):
        handover.detach(s, "a")  # still waiting
    with pytest.raises(ValueError, match="not running"):
        handover.detach(s, "nobody")
    step(s, FakeExecutor(), clock)
    other = make_scheduler(clock=clock)
    add_all(other, [make_request("a")])
    with pytest.raises(ValueError, match="duplicate"):
        handover.attach(other, handover.detach(s, "a"))


def test_a_migrated_prefix_is_a_cache_hit_on_the_destination():
    clock = ManualClock()
    src, dst = make_scheduler(clock=clock), make_scheduler(clock=clock)
    shared = (1, 2, 3)
    add_all(src, [make_request("a", num_prompt_tokens=12, hash_ids=shared, hash_block_size=4)])
    step(src, FakeExecutor(), clock)
    assert handover.attach(dst, handover.detach(src, "a"))
    follower = make_request("b", num_prompt_tokens=12, hash_ids=shared, hash_block_size=4)
    assert dst.num_cached_prefix_tokens(follower) == 8  # the last block is always computed
