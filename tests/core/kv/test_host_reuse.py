"""Host KV reuse (FastSwitch): host copies outlive swap-in; a session's next turn copies its
history back in instead of recomputing it."""

from tests.factories import FakeExecutor, add_all, make_request, make_scheduler, run_steps

from shunter.core.clock import ManualClock
from shunter.core.kv.host import HostCache
from shunter.core.kv.manager import KVCacheManager

IDS = tuple(range(100, 110))  # one conversation's blocks (4 tokens each)


def turn(request_id: str, num_prompt_tokens: int, **kw):
    return make_request(request_id, num_prompt_tokens=num_prompt_tokens, session_id="s",
                        hash_ids=IDS, hash_block_size=4, **kw)


def test_a_second_swap_out_copies_only_blocks_the_host_lacks():
    kv = KVCacheManager(32, 4, enable_caching=False, num_host_blocks=16, host_reuse=True)
    r = turn("a", 16)
    assert kv.allocate_slots(r, 16)
    r.num_computed_tokens = 16
    assert len(kv.swap_out(r)) == 4
    kv.swap_in(r)
    assert kv.allocate_slots(r, 4)
    r.num_computed_tokens = 20
    r.num_output_tokens = 4  # the 5th block is full now
    r.block_hashes.append(IDS[4])
    assert len(kv.swap_out(r)) == 1  # the first four are still on the host
    kv.host.check_invariants()
    kv.free_host(r)
    kv.host.check_invariants()


def test_the_next_turn_copies_the_offloaded_history_in():
    clock = ManualClock()
    s = make_scheduler(clock=clock, num_blocks=32, block_size=4, enable_prefix_caching=False,
                       num_host_blocks=16, host_kv_reuse=True)
    first = turn("t0", 8)
    add_all(s, [first])
    ex = FakeExecutor({"t0": 5, "t1": 3})  # 8 + 5 tokens: 3 full blocks when t0 ends
    run_steps(s, ex, clock)
    offloads = [o.offload for o in ex.outputs if o.offload or o.swap_out]
    assert offloads == []  # nothing runs after it yet: the copy waits for the next step
    second = turn("t1", 16)  # its prompt is turn 0's 13 tokens + 3 new ones
    add_all(s, [second])
    run_steps(s, ex, clock)
    step = next(o for o in ex.outputs if any(c.request_id == "t1" for c in o.chunks))
    assert len(step.offload) == 3 and not step.swap_out  # turn 0's full blocks go to host...
    assert len(step.swap_in) == 3  # ...and come back as turn 1's history
    assert [(c.request_id, c.num_computed_tokens) for c in step.chunks] == [("t1", 12)]
    assert second.num_cached_tokens == 12


def test_host_cache_evicts_least_recently_used_copies():
    host = HostCache(2)
    a, b = host.allocate(1), host.allocate(2)
    host.release([a, b])
    assert host.num_available == 2
    host.acquire(host.lookup(1))  # used again: b is now the oldest unused copy
    c = host.allocate(3)
    assert c == b and host.lookup(2) is None and host.lookup(3) == c
    host.check_invariants()


def test_only_sessions_offload_unless_the_host_tier_takes_every_request():
    """host_kv_offload = "all" (LMCache's CPU tier): a request without a session is stored
    too, and an unrelated later request sharing its prefix copies it in from the host."""
    for mode, expected_hits in (("sessions", 0), ("all", 12)):
        clock = ManualClock()
        s = make_scheduler(clock=clock, num_blocks=32, block_size=4, enable_prefix_caching=False,
                           num_host_blocks=16, host_kv_reuse=True, host_kv_offload=mode)
        first = make_request("a", num_prompt_tokens=8, hash_ids=IDS, hash_block_size=4)
        add_all(s, [first])
        ex = FakeExecutor({"a": 5, "b": 3})
        run_steps(s, ex, clock)
        second = make_request("b", num_prompt_tokens=16, hash_ids=IDS, hash_block_size=4)
        add_all(s, [second])
        run_steps(s, ex, clock)
        step = next(o for o in ex.outputs if any(c.request_id == "b" for c in o.chunks))
        assert len(step.offload) == expected_hits // 4
        assert len(step.swap_in) == expected_hits // 4
        assert second.num_cached_tokens == expected_hits


def test_a_host_tier_for_every_request_needs_host_reuse():
    import pytest

    with pytest.raises(ValueError, match="host_kv_offload = 'all' needs host_kv_reuse"):
        make_scheduler(num_blocks=32, host_kv_offload="all")
