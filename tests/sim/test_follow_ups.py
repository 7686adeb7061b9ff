"""Dependent requests: a follow-up arrives `delay_s` after the request it follows finishes."""

import pytest

from shunter.core.types import RequestSpec
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate
from shunter.workload.program import FollowUp


def spec(request_id: str, arrival_s: float = 0.0) -> RequestSpec:
    return RequestSpec(request_id=request_id, arrival_s=arrival_s, num_prompt_tokens=64,
                       num_output_tokens=8, program_id="p")


def test_a_follow_up_is_released_when_its_predecessor_finishes():
    follow_ups = {"c0": FollowUp(spec("c1"), delay_s=0.25), "c1": FollowUp(spec("c2"), 0.0)}
    run = simulate(SimConfig(), [spec("c0", 1.0)], follow_ups=follow_ups)
    by_id = {r.request_id: r for r in run.records}
    assert sorted(by_id) == ["c0", "c1", "c2"]
    assert by_id["c1"].arrival_s == by_id["c0"].finish_s + 0.25
    assert by_id["c2"].arrival_s == by_id["c1"].finish_s
    assert all(r.program_id == "p" for r in run.records)


def test_follow_ups_are_released_after_rejections_too():
    huge = RequestSpec(request_id="c0", arrival_s=0.0, num_prompt_tokens=10**6, num_output_tokens=1)
    run = simulate(SimConfig(), [huge], follow_ups={"c0": FollowUp(spec("c1"), 1.0)})
    assert [r.request_id for r in run.records] == ["c0", "c1"]
    assert run.records[1].arrival_s == 1.0 and run.records[1].is_completed


def test_a_barrier_waits_for_the_last_of_its_dependencies():
    # stage 0: a short and a long call; stage 1 (two calls) waits for both
    short = RequestSpec(request_id="s0a", arrival_s=0.0, num_prompt_tokens=64,
                        num_output_tokens=2, program_id="p")
    long = RequestSpec(request_id="s0b", arrival_s=0.0, num_prompt_tokens=64,
                       num_output_tokens=40, program_id="p")
    stage1 = (FollowUp(spec("s1a"), 0.5, num_dependencies=2),
              FollowUp(spec("s1b"), 0.5, num_dependencies=2))
    run = simulate(SimConfig(), [short, long], follow_ups={"s0a": stage1, "s0b": stage1})
    by_id = {r.request_id: r for r in run.records}
    assert sorted(by_id) == ["s0a", "s0b", "s1a", "s1b"]
    assert by_id["s0a"].finish_s < by_id["s0b"].finish_s
    # released once, after the last dependency, not once per dependency
    assert by_id["s1a"].arrival_s == by_id["s1b"].arrival_s == by_id["s0b"].finish_s + 0.5


def test_a_call_may_release_several_calls_at_once():
    fan_out = (FollowUp(spec("c1")), FollowUp(spec("c2")))
    run = simulate(SimConfig(), [spec("c0")], follow_ups={"c0": fan_out})
    by_id = {r.request_id: r for r in run.records}
    assert by_id["c1"].arrival_s == by_id["c2"].arrival_s == by_id["c0"].finish_s


def test_a_follow_up_needs_a_dependency():
    with pytest.raises(ValueError, match="num_dependencies"):
        FollowUp(spec("c1"), num_dependencies=0)


def test_plas_serves_small_programs_ahead_of_a_wide_one_that_arrived_first():
    # one wide program (2 stages of 12 parallel calls) starts at 0; 6 one-call programs follow
    wide = [RequestSpec(request_id=f"w{k}c{j}", arrival_s=0.0, num_prompt_tokens=200,
                        num_output_tokens=100, program_id="wide") for k in range(2) for j in range(12)]
    barrier = tuple(FollowUp(s, 0.0, num_dependencies=12) for s in wide[12:])
    small = [RequestSpec(request_id=f"s{i}", arrival_s=0.1 + 0.1 * i, num_prompt_tokens=200,
                         num_output_tokens=20, program_id=f"small{i}") for i in range(6)]

    def small_latency(policy: str) -> float:
        config = SimConfig(policy=policy, scheduler={"max_num_seqs": 4},
                           policy_params={"first_level_service": 500.0} if policy == "plas" else {})
        run = simulate(config, wide[:12] + small, follow_ups={s.request_id: barrier for s in wide[:12]})
        return sum(r.finish_s - r.arrival_s for r in run.records if r.program_id != "wide") / 6

    assert small_latency("plas") < 0.5 * small_latency("fcfs")
