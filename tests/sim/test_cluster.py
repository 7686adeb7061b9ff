import pytest
from tests.factories import make_spec

from shunter.core.types import FinishReason
from shunter.errors import WorkloadError
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate


def workload(n: int = 60, gap_s: float = 0.05, prompt: int = 300, out: int = 40) -> list:
    return [make_spec(f"r{i}", arrival_s=i * gap_s, num_prompt_tokens=prompt + 7 * (i % 5),
                      num_output_tokens=out + (i % 7)) for i in range(n)]


def records_fingerprint(run) -> list:
    return [(r.request_id, r.replica_id, r.finish_reason, tuple(r.token_times_s), r.first_scheduled_s)
            for r in run.records]


def test_every_request_gets_one_record_with_its_true_output_length():
    specs = workload()
    run = simulate(SimConfig(num_replicas=2), specs)
    assert sorted(r.request_id for r in run.records) == sorted(s.request_id for s in specs)
    by_id = {s.request_id: s for s in specs}
    for rec in run.records:
        assert rec.finish_reason == FinishReason.STOP
        assert rec.num_output_tokens == by_id[rec.request_id].num_output_tokens
        assert rec.arrival_s <= rec.first_scheduled_s <= rec.token_times_s[0] <= rec.finish_s


def test_same_config_and_trace_give_identical_results_and_step_logs():
    specs = workload()
    config = SimConfig(num_replicas=3, num_blocks=200, record_steps=True)
    a, b = simulate(config, specs), simulate(config, specs)
    assert records_fingerprint(a) == records_fingerprint(b)
    assert a.step_log == b.step_log and a.step_log


def test_memory_pressure_preempts_and_still_finishes_everything():
    specs = workload(n=30, gap_s=0.0, prompt=200, out=200)
    run = simulate(SimConfig(num_blocks=120), specs)
    assert run.num_preemptions > 0
    assert all(r.finish_reason == FinishReason.STOP for r in run.records)
    assert sum(r.num_preemptions for r in run.records) == run.num_preemptions


def test_swap_preemption_runs_in_the_simulator():
    specs = workload(n=30, gap_s=0.0, prompt=200, out=200)
    run = simulate(SimConfig(num_blocks=120, scheduler={"preemption_mode": "swap"}), specs)
    assert run.num_preemptions > 0 and len(run.records) == 30


def test_too_long_requests_are_rejected_and_reported_not_dropped():
    specs = [make_spec("ok", num_prompt_tokens=100), make_spec("huge", num_prompt_tokens=200_000)]
    run = simulate(SimConfig(), specs)
    by_id = {r.request_id: r for r in run.records}
    assert by_id["huge"].finish_reason == FinishReason.REJECTED
    assert "max_model_len" in by_id["huge"].error
    assert by_id["ok"].finish_reason == FinishReason.STOP


def test_routers_spread_load():
    specs = workload(n=40)
    rr = simulate(SimConfig(num_replicas=4, router="round_robin"), specs)
    assert rr.num_routed == [10, 10, 10, 10]
    ll = simulate(SimConfig(num_replicas=4, router="least_load"), specs)
    assert sum(ll.num_routed) == 40 and min(ll.num_routed) > 0


def test_unsorted_workload_is_a_clear_error():
    specs = [make_spec("a", arrival_s=1.0), make_spec("b", arrival_s=0.5)]
    with pytest.raises(WorkloadError, match="sorted by arrival"):
        simulate(SimConfig(), specs)


def test_prefill_first_has_worse_decode_latency_than_chunked_prefill():
    # Sarathi-Serve's point: prompts stall decodes when prefills run alone
    specs = workload(n=80, gap_s=0.02, prompt=1500, out=60)
    chunked = simulate(SimConfig(scheduler={"max_num_batched_tokens": 512}), specs)
    first = simulate(SimConfig(scheduler={"enable_chunked_prefill": False,
                                          "max_num_batched_tokens": 4096}), specs)

    def max_gap(run):
        return max(max(b - a for a, b in zip(r.token_times_s, r.token_times_s[1:], strict=False))
                   for r in run.records)
    assert max_gap(first) > 1.5 * max_gap(chunked)


def test_bad_sim_config_values():
    with pytest.raises(ValueError, match="num_replicas"):
        SimConfig(num_replicas=0)
    with pytest.raises(ValueError, match="derived"):
        SimConfig(scheduler={"num_blocks": 3})
    with pytest.raises(ValueError, match="unknown scheduler options"):
        simulate(SimConfig(scheduler={"bogus": 1}), workload(n=1))
