"""Scheduler traces: each test reads like the step log it asserts."""

import sys

import pytest
from tests.factories import FakeExecutor, add_all, make_request, make_scheduler, run_steps

from shunter.core.clock import ManualClock
from shunter.core.sched.interface import StepResult
from shunter.core.sched.policy import charges_service
from shunter.core.sched.registry import make_policy
from shunter.core.types import FinishReason, RequestStatus


def trace(executor: FakeExecutor) -> list[list[tuple[str, int, int]]]:
    return [[(c.request_id, c.num_computed_tokens, c.num_scheduled_tokens) for c in out.chunks]
            for out in executor.outputs]


def test_chunked_prefill_runs_decodes_first_and_chunks_prompts_into_the_leftover_budget():
    clock = ManualClock()
    s = make_scheduler(clock=clock, max_num_batched_tokens=8)
    add_all(s, [make_request("a", num_prompt_tokens=10), make_request("b", num_prompt_tokens=6)])
    ex = FakeExecutor({"a": 3, "b": 2})
    run_steps(s, ex, clock)
    assert trace(ex) == [
        [("a", 0, 8)],
        [("a", 8, 2), ("b", 0, 6)],  # a's last chunk samples; b fills the budget
        [("a", 10, 1), ("b", 6, 1)],
        [("a", 11, 1)],
    ]


def test_prefill_first_stalls_decodes_while_prompts_are_admitted():
    clock = ManualClock()
    s = make_scheduler(clock=clock, max_num_batched_tokens=16, enable_chunked_prefill=False)
    add_all(s, [make_request("a", num_prompt_tokens=8)])
    ex = FakeExecutor({"a": 4, "b": 2})
    out1 = s.schedule()
    s.update(out1, ex.execute(out1))
    add_all(s, [make_request("b", num_prompt_tokens=8)])
    out2 = s.schedule()
    assert [(c.request_id, c.num_scheduled_tokens) for c in out2.chunks] == [("b", 8)]  # a stalls
    s.update(out2, ex.execute(out2))
    out3 = s.schedule()
    assert [(c.request_id, c.num_scheduled_tokens) for c in out3.chunks] == [("a", 1), ("b", 1)]


def test_prefill_first_rejects_prompts_over_the_budget():
    s = make_scheduler(max_num_batched_tokens=8, enable_chunked_prefill=False)
    out = s.add_request(make_request("a", num_prompt_tokens=9))
    assert out is not None and out.finish_reason == FinishReason.REJECTED
    assert "max_num_batched_tokens" in out.error


def test_requests_that_can_never_fit_are_rejected_with_a_reason():
    s = make_scheduler(num_blocks=4, block_size=4, max_model_len=64)
    too_long = s.add_request(make_request("ctx", num_prompt_tokens=64))
    too_big = s.add_request(make_request("kv", num_prompt_tokens=16))  # 17 tokens need 5 blocks
    assert too_long.finish_reason == FinishReason.REJECTED and "max_model_len=64" in too_long.error
    assert too_big.finish_reason == FinishReason.REJECTED and "more KV blocks than the cache's 4" in too_big.error
    assert not s.has_work


def test_length_limits_end_requests():
    clock = ManualClock()
    s = make_scheduler(clock=clock, num_blocks=8, block_size=4)  # 32 tokens of KV in all
    add_all(s, [make_request("cap", num_prompt_tokens=4, max_output_tokens=3),
                make_request("kv", num_prompt_tokens=20)])
    outs = run_steps(s, FakeExecutor(), clock)
    finished = {o.request_id: o for o in outs if o.is_finished}
    assert finished["cap"].finish_reason == FinishReason.LENGTH
    assert finished["kv"].finish_reason == FinishReason.LENGTH
    assert sum(1 for o in outs if o.request_id == "cap") == 3


def test_recompute_preemption_frees_the_latest_and_it_rehits_its_own_prefix():
    clock = ManualClock()
    # 6 blocks of 4 tokens: two 8-token prompts fit (2 blocks each), growth forces a preemption
    s = make_scheduler(clock=clock, num_blocks=6, block_size=4, watermark=0.0)
    a = make_request("a", num_prompt_tokens=8, arrival_s=0.0)
    b = make_request("b", num_prompt_tokens=8, arrival_s=1.0)
    add_all(s, [a, b])
    ex = FakeExecutor({"a": 8, "b": 8})
    outs = run_steps(s, ex, clock)
    preempting = [o for o in ex.outputs if o.preempted_ids]
    assert preempting and preempting[0].preempted_ids == ("b",)  # latest arrival is the victim
    # the step that preempted admitted nobody
    assert all(c.request_id == "a" for c in preempting[0].chunks)
    assert b.num_preemptions >= 1 and b.num_cached_tokens == 0
    readmit = next(o for o in ex.outputs if any(n.request_id == "b" for n in o.new_requests)
                   and o.step_id > preempting[0].step_id)
    chunk = next(c for c in readmit.chunks if c.request_id == "b")
    assert chunk.num_computed_tokens > 0  # its own blocks were still in the prefix cache
    assert {o.request_id for o in outs if o.is_finished} == {"a", "b"}
    assert sum(1 for o in outs if o.request_id == "b") == 8  # no token lost or duplicated


def test_swap_preemption_moves_blocks_to_host_and_back():
    clock = ManualClock()
    s = make_scheduler(clock=clock, num_blocks=6, block_size=4, watermark=0.0,
                       preemption_mode="swap", num_host_blocks=8, enable_prefix_caching=False)
    b = make_request("b", num_prompt_tokens=8, arrival_s=1.0)
    add_all(s, [make_request("a", num_prompt_tokens=8), b])
    ex = FakeExecutor({"a": 8, "b": 8})
    outs = run_steps(s, ex, clock)
    out_steps = [o for o in ex.outputs if o.swap_out]
    in_steps = [o for o in ex.outputs if o.swap_in]
    assert out_steps and in_steps and not any(o.preempted_ids for o in ex.outputs)
    assert len(out_steps[0].swap_out) == len(in_steps[0].swap_in)
    assert b.num_preemptions >= 1
    # after swap-in, b continues from where it was: no chunk of b recomputes from zero
    assert all(c.num_computed_tokens > 0 for o in in_steps for c in o.chunks if c.request_id == "b")
    assert sum(1 for o in outs if o.request_id == "b") == 8
    assert s.kv.num_free_host_blocks == 8


def test_swap_falls_back_to_recompute_when_host_is_full():
    clock = ManualClock()
    s = make_scheduler(clock=clock, num_blocks=6, block_size=4, watermark=0.0,
                       preemption_mode="swap", num_host_blocks=1)
    add_all(s, [make_request("a", num_prompt_tokens=8), make_request("b", num_prompt_tokens=8, arrival_s=1.0)])
    ex = FakeExecutor({"a": 8, "b": 8})
    run_steps(s, ex, clock)
    assert any(o.preempted_ids for o in ex.outputs) and not any(o.swap_out for o in ex.outputs)


def test_priority_preemption_displaces_a_worse_running_request():
    clock = ManualClock()
    s = make_scheduler(clock=clock, num_blocks=4, block_size=4, watermark=0.0, policy="priority",
                       policy_params={"aging_s": None})
    low = make_request("low", num_prompt_tokens=8, priority=5)
    add_all(s, [low])
    ex = FakeExecutor({"low": 50, "high": 2})
    for _ in range(2):
        out = s.schedule()
        clock.advance_to(clock.now() + 1)
        s.update(out, ex.execute(out))
    add_all(s, [make_request("high", num_prompt_tokens=8, priority=0, arrival_s=2.0)])
    out = s.schedule()
    assert out.preempted_ids == ("low",)
    assert [c.request_id for c in out.chunks] == ["high"]
    assert low.status == RequestStatus.PREEMPTED


def test_priority_below_threshold_does_not_preempt():
    clock = ManualClock()
    s = make_scheduler(clock=clock, num_blocks=4, block_size=4, watermark=0.0, policy="priority",
                       policy_params={"aging_s": None, "preemption_threshold": 3})
    add_all(s, [make_request("low", num_prompt_tokens=8, priority=2)])
    ex = FakeExecutor()
    out = s.schedule()
    s.update(out, ex.execute(out))
    add_all(s, [make_request("high", num_prompt_tokens=8, priority=0)])
    out = s.schedule()
    assert not out.preempted_ids and [c.request_id for c in out.chunks] == ["low"]


def test_aging_lets_a_starving_low_priority_request_overtake_newer_high_ones():
    clock = ManualClock()
    s = make_scheduler(clock=clock, policy="priority", policy_params={"aging_s": 1.0},
                       max_num_seqs=1)
    add_all(s, [make_request("old_low", priority=3, arrival_s=0.0),
                make_request("new_high", priority=0, arrival_s=5.0)])
    out = s.schedule()
    # old_low waited 5 s: effective priority 3 - 5 = -2 beats new_high's 0
    assert [c.request_id for c in out.chunks] == ["old_low"]


def test_max_num_seqs_caps_the_batch():
    clock = ManualClock()
    s = make_scheduler(clock=clock, max_num_seqs=2)
    add_all(s, [make_request(f"r{i}", num_prompt_tokens=4) for i in range(3)])
    out = s.schedule()
    assert [c.request_id for c in out.chunks] == ["r0", "r1"]


def test_prefix_cache_hit_skips_the_shared_prompt():
    clock = ManualClock()
    s = make_scheduler(clock=clock, block_size=4)
    ids = tuple(range(12))
    add_all(s, [make_request("a", num_prompt_tokens=12, prompt_token_ids=ids)])
    run_steps(s, FakeExecutor({"a": 1}), clock)
    b = make_request("b", num_prompt_tokens=12, prompt_token_ids=ids)
    add_all(s, [b])
    out = s.schedule()
    # 3 full blocks cached, but the last token is recomputed so the step can sample
    assert [(c.num_computed_tokens, c.num_scheduled_tokens) for c in out.chunks] == [(8, 4)]
    assert b.num_cached_tokens == 8


def test_abort_frees_everything_wherever_the_request_is():
    clock = ManualClock()
    s = make_scheduler(clock=clock, max_num_seqs=1)
    add_all(s, [make_request("run"), make_request("wait")])
    out = s.schedule()
    assert s.abort("wait").finish_reason == FinishReason.ABORT
    assert s.abort("run").finish_reason == FinishReason.ABORT
    assert s.abort("run") is None
    s.update(out, StepResult(1.0, {"run": 7}))  # the step that was in flight is ignored
    assert not s.has_work and s.kv.num_free_blocks == s.config.num_blocks
    assert set(s.schedule().finished_ids) == {"run", "wait"}


def test_duplicate_request_id_is_an_error():
    s = make_scheduler()
    add_all(s, [make_request("a")])
    with pytest.raises(ValueError, match="duplicate"):
        s.add_request(make_request("a"))


def test_whole_sequence_admission_never_preempts():
    clock = ManualClock()
    s = make_scheduler(clock=clock, num_blocks=10, block_size=4, admission="whole", watermark=0.0)
    add_all(s, [make_request(f"r{i}", num_prompt_tokens=8, max_output_tokens=8, arrival_s=i)
                for i in range(4)])
    ex = FakeExecutor()
    outs = run_steps(s, ex, clock)
    assert s.num_preemptions == 0
    assert sum(1 for o in outs if o.is_finished) == 4


def test_whole_admission_without_an_output_cap_reserves_the_context_as_orca_does():
    """No max_output_tokens: each request reserves the whole context (16 tokens = 4 blocks of
    the 6), so two never run at once (the Orca baseline of benchmarks/repro_mlfq.py)."""
    clock = ManualClock()
    s = make_scheduler(clock=clock, num_blocks=6, block_size=4, max_model_len=16,
                       admission="whole", watermark=0.0)
    add_all(s, [make_request(f"r{i}", num_prompt_tokens=4, arrival_s=i) for i in range(2)])
    ex = FakeExecutor({"r0": 3, "r1": 3})
    outs = run_steps(s, ex, clock)
    assert all(len({c.request_id for c in o.chunks}) <= 1 for o in ex.outputs)
    assert s.num_preemptions == 0 and sum(1 for o in outs if o.is_finished) == 2


def test_same_inputs_give_identical_step_logs():
    def run() -> list:
        clock = ManualClock()
        s = make_scheduler(clock=clock, num_blocks=12, block_size=4, watermark=0.0)
        add_all(s, [make_request(f"r{i}", num_prompt_tokens=5 + i, arrival_s=i * 0.1) for i in range(6)])
        ex = FakeExecutor({f"r{i}": 3 + i for i in range(6)})
        run_steps(s, ex, clock)
        return [repr(o) for o in ex.outputs]
    assert run() == run()


def _decoding(policy: str, **params: object):
    """A scheduler whose two requests have sampled a token and decode next."""
    clock = ManualClock()
    s = make_scheduler(clock=clock, policy=policy, policy_params=params)
    add_all(s, [make_request("a", num_prompt_tokens=8, tenant="x"),
                make_request("b", num_prompt_tokens=8, tenant="y", arrival_s=0.5)])
    out = s.schedule()
    s.update(out, FakeExecutor({"a": 50, "b": 50}).execute(out))
    return s


def test_steps_until_reorder_declares_how_long_the_policys_decisions_hold():
    static = _decoding("fcfs")
    assert static.steps_until_reorder() == sys.maxsize  # a static order never reorders
    assert static.steps_until_reorder(is_applied=False) == sys.maxsize - 1
    mlfq = _decoding("mlfq", base_quantum_tokens=16)  # charges nothing when a step is scheduled
    bound = mlfq.policy.steps_until_reorder(mlfq.running)  # type: ignore[attr-defined]
    assert bound == 15 and mlfq.steps_until_reorder() == bound
    assert mlfq.steps_until_reorder(is_applied=False) == bound - 1
    vtc = _decoding("vtc")  # charges when scheduled: its bound holds from an applied state only
    vtc_bound = vtc.policy.steps_until_reorder(vtc.running)  # type: ignore[attr-defined]
    assert vtc_bound > 0 and vtc.steps_until_reorder() == vtc_bound
    assert vtc.steps_until_reorder(is_applied=False) == 0
    unbounded = _decoding("fcfs")
    unbounded.policy.has_static_order = False  # dynamic, with no declared bound: no runs
    assert unbounded.steps_until_reorder() == 0


def test_charges_on_schedule_false_lets_runtimes_skip_on_scheduled():
    assert not charges_service(make_policy("mlfq")) and not charges_service(make_policy("fcfs"))
    assert charges_service(make_policy("vtc"))  # (no charges_on_schedule: the default, True)


def test_priority_victim_is_the_worst_preemptible_request_the_policy_lets_go():
    clock = ManualClock()
    s = make_scheduler(clock=clock, policy="priority", policy_params={"aging_s": None})
    add_all(s, [make_request("low", num_prompt_tokens=8, priority=5),
                make_request("mid", num_prompt_tokens=8, priority=3)])
    out = s.schedule()
    s.update(out, FakeExecutor({"low": 50, "mid": 50}).execute(out))
    assert s.priority_victim(make_request("top", priority=0), clock.now()).request_id == "low"
    assert s.priority_victim(make_request("peer", priority=5), clock.now()) is None  # no gap
    for r in s.running:  # readmitted after a preemption, no new token yet: spared (no storms)
        r.num_preemptions, r.has_progressed = 1, False
    assert s.priority_victim(make_request("top", priority=0), clock.now()) is None
