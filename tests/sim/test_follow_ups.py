"""Dependent requests: a follow-up arrives `delay_s` after the request it follows finishes."""

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
