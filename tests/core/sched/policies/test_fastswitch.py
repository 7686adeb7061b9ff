"""fastswitch: priority drops every quantum of service, so waiting requests preempt often."""

import pytest
from tests.core.sched.policies.tracing import run_trace
from tests.factories import FakeExecutor, make_request, make_scheduler

from shunter.core.clock import ManualClock
from shunter.core.sched.registry import make_policy


def switching_run(preemption_mode: str, kv_allocation: str = "lru"):
    clock = ManualClock()
    s = make_scheduler(clock=clock, policy="fastswitch", policy_params={"quantum_tokens": 8},
                       num_blocks=10, block_size=4, watermark=0.0, enable_prefix_caching=False,
                       preemption_mode=preemption_mode, num_host_blocks=64,
                       kv_allocation=kv_allocation)
    reqs = [make_request(f"r{i}", num_prompt_tokens=8, arrival_s=0.5 * i) for i in range(4)]
    ex = FakeExecutor({r.request_id: 12 for r in reqs})
    records = run_trace(s, ex, clock, reqs)
    return ex, records


def test_priorities_rotate_and_waiting_requests_preempt_running_ones():
    ex, records = switching_run("swap")
    swaps = sum(1 for o in ex.outputs if o.swap_out)
    assert swaps >= 4  # context switches every quantum, not once
    assert all(r.is_completed and r.num_output_tokens == 12 for r in records.values())
    # every request got its first token before any finished: round robin, not FCFS
    assert max(r.token_times_s[0] for r in records.values()) < min(
        r.finish_s for r in records.values())


def num_block_runs(pairs) -> int:
    ordered = sorted(pairs)
    return len(ordered) - sum(1 for (s0, d0), (s1, d1) in zip(ordered, ordered[1:], strict=False)
                              if s1 == s0 + 1 and d1 == d0 + 1)


def test_contiguous_allocation_copies_fewer_runs():
    def runs(kv_allocation: str) -> int:
        ex, _ = switching_run("swap", kv_allocation)
        return sum(num_block_runs(o.swap_out) + num_block_runs(o.swap_in) for o in ex.outputs)

    assert runs("contiguous") < runs("lru")


def test_levels_and_preemption_rule():
    policy = make_policy("fastswitch", quantum_tokens=10)
    a, b = make_request("a", num_prompt_tokens=30), make_request("b", priority=1)
    policy.on_scheduled(a, 30, 0.0)  # 30 prompt tokens + 1 sampled: 31 tokens of service
    assert policy.level(a) == 3 and policy.level(b) == 0
    assert policy.should_preempt(make_request("c"), a, 0.0)
    assert not policy.should_preempt(b, a, 0.0)  # a worse class never preempts
    policy.on_finished(a, 0.0)
    assert policy.level(a) == 0
    with pytest.raises(ValueError, match="quantum_tokens"):
        make_policy("fastswitch", quantum_tokens=0)
