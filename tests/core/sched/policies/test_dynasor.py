"""Dynasor: programs stop at the first gang round whose Certaindex reaches the threshold, their
branches are ordered together, hard programs are deprioritized or capped."""

from __future__ import annotations

import math
import sys

import pytest
from tests.factories import FakeExecutor, add_all, make_request, make_scheduler, run_steps

from shunter.core.sched.interface import SchedulerOutput, StepResult
from shunter.core.sched.policies.dynasor import DynasorPolicy
from shunter.core.sched.policy import EarlyStoppingPolicy, charges_service
from shunter.core.sched.registry import make_policy
from shunter.core.types import FinishReason


class RoundExecutor(FakeExecutor):
    """Reports, every `interval` tokens of a request, its program's value for that round."""

    def __init__(self, lengths: dict[str, int], interval: int,
                 rounds: dict[str, list[float]]) -> None:
        super().__init__(lengths)
        self.interval, self.rounds = interval, rounds

    def execute(self, output: SchedulerOutput) -> StepResult:
        result = super().execute(output)
        probes = {}
        for rid in result.sampled:
            k, rest = divmod(self.generated[rid], self.interval)
            values = self.rounds.get(rid.split("b")[0], [])
            if rest == 0 and values:
                probes[rid] = values[min(k, len(values)) - 1]
        return StepResult(result.duration_s, result.sampled, result.stopped, probes)


def branches(program: str, n: int, *, arrival_s: float = 0.0, output: int = 20, prompt: int = 8):
    return [make_request(f"{program}b{i}", num_prompt_tokens=prompt, num_output_tokens=output,
                         arrival_s=arrival_s, program_id=program) for i in range(n)]


def run(requests, rounds, *, interval=4, outputs=None, **params):
    max_num_seqs = params.pop("max_num_seqs", 16)
    scheduler = make_scheduler(policy="dynasor", num_blocks=256, max_num_seqs=max_num_seqs,
                               policy_params={"probe_tokens": interval, **params})
    add_all(scheduler, requests)
    lengths = outputs or {r.request_id: 20 for r in requests}
    executor = RoundExecutor(lengths, interval, rounds)
    out = run_steps(scheduler, executor, scheduler.clock)
    tokens = {r.request_id: r.num_output_tokens for r in requests}
    reasons = {o.request_id: o.finish_reason for o in out if o.finish_reason is not None}
    admitted = [n.request_id for o in executor.outputs for n in o.new_requests]
    return tokens, reasons, admitted, scheduler


def test_a_program_stops_at_the_first_round_whose_certaindex_reaches_the_threshold():
    requests = branches("q", 3) + branches("s", 2)
    tokens, reasons, _, scheduler = run(requests, {"q": [0.2, 0.45, 0.6, 0.9], "s": [0.1]},
                                        threshold=0.5)
    assert tokens == {"qb0": 12, "qb1": 12, "qb2": 12, "sb0": 20, "sb1": 20}  # round 3
    assert reasons == {"qb0": FinishReason.EARLY_STOP, "qb1": FinishReason.EARLY_STOP,
                       "qb2": FinishReason.EARLY_STOP, "sb0": FinishReason.STOP,
                       "sb1": FinishReason.STOP}
    assert not scheduler.policy.programs  # every program's state released with its branches


def test_the_round_waits_for_every_live_branch_of_the_gang():
    """Two seats: q's third branch waits, so q's round stays 0 and its first two run to their
    end (certain or not); the third, alone then, stops at its first probe."""
    requests = branches("q", 3)
    tokens, reasons, admitted, _ = run(requests, {"q": [0.9]}, max_num_seqs=2,
                                       outputs={"qb0": 10, "qb1": 10, "qb2": 20})
    assert tokens == {"qb0": 10, "qb1": 10, "qb2": 4}
    assert reasons["qb2"] == FinishReason.EARLY_STOP and reasons["qb0"] == FinishReason.STOP


def test_a_programs_branches_are_admitted_together_before_a_later_program():
    """Gang order: q's branches share a key; r arrived later and waits for all of them."""
    requests = branches("r", 2, arrival_s=1.0) + branches("q", 3)
    _, _, admitted, _ = run(requests, {}, max_num_seqs=2,
                            outputs={r.request_id: 4 for r in requests})
    assert admitted == ["qb0", "qb1", "qb2", "rb0", "rb1"]


@pytest.mark.parametrize("order", ["las", "fcfs"])
def test_programs_are_ordered_by_the_gang_rounds_they_completed_or_by_arrival(order):
    policy = DynasorPolicy(probe_tokens=4, order=order)
    old = make_request("ab0", program_id="a", arrival_s=0.0)
    new = make_request("bb0", program_id="b", arrival_s=5.0)
    policy.make_queue()
    assert policy.key(old) < policy.key(new)  # nothing run yet: arrival order
    old.num_output_tokens = 8
    policy.early_stops([(old, 0.1)], 6.0)  # a has completed round 2 at certainty 0.1
    assert policy.programs["a"].round == 2 and policy.programs["a"].certainty == 0.1
    assert (policy.key(old) > policy.key(new)) == (order == "las")  # least attained first


def test_the_round_is_the_gangs_and_its_certaindex_the_mean_of_its_branches():
    """The engine's values differ per branch: the program's Certaindex at a round is their
    mean, taken when the slowest live branch reaches it."""
    policy = DynasorPolicy(probe_tokens=4, threshold=0.6)
    a, b = make_request("qb0", program_id="q"), make_request("qb1", program_id="q")
    queue = policy.make_queue()
    queue.add(a)
    queue.add(b)  # (the policy learns of its branches as they are queued)
    a.num_output_tokens = 4
    assert policy.early_stops([(a, 0.9)], 0.0) == []  # b has not reached round 1
    assert policy.programs["q"].round == 0
    b.num_output_tokens = 4
    assert policy.early_stops([(b, 0.4)], 0.0) == [a, b]  # (0.9 + 0.4) / 2 >= 0.6


def test_hard_programs_are_deprioritized_and_give_up_their_seats():
    policy = DynasorPolicy(probe_tokens=4, budget_tokens=8, low_certainty=0.3)
    hard = make_request("hb0", program_id="h", arrival_s=0.0)
    other = make_request("ob0", program_id="o", arrival_s=9.0)
    policy.make_queue()
    hard.num_output_tokens = 4
    policy.early_stops([(hard, 0.1)], 1.0)
    assert not policy.programs["h"].is_hard  # below the budget: not judged yet
    hard.num_output_tokens = 8
    assert policy.early_stops([(hard, 0.2)], 2.0) == []
    assert policy.programs["h"].is_hard
    assert policy.key(hard) > policy.key(other)  # after every other program, though earlier
    assert policy.should_preempt(other, hard, 3.0) and not policy.should_preempt(hard, other, 3.0)


def test_with_stop_hard_a_hard_program_is_capped_at_the_budget():
    requests = branches("h", 2) + branches("e", 2)
    tokens, reasons, _, _ = run(requests, {"h": [0.1, 0.2, 0.2, 0.2, 0.2], "e": [0.1, 0.35]},
                                budget_tokens=8, low_certainty=0.3, stop_hard=True)
    assert tokens == {"hb0": 8, "hb1": 8, "eb0": 20, "eb1": 20}  # e: 0.35 is not low
    assert reasons["hb0"] == FinishReason.EARLY_STOP


def test_deprioritized_hard_branches_yield_their_seats_to_new_programs():
    requests = branches("h", 2, output=40) + branches("n", 2, arrival_s=0.5, output=6)
    _, reasons, admitted, scheduler = run(
        requests, {"h": [0.1] * 10}, budget_tokens=8, low_certainty=0.3, max_num_seqs=2,
        outputs={"hb0": 40, "hb1": 40, "nb0": 6, "nb1": 6})
    assert admitted[:2] == ["hb0", "hb1"]  # then n arrives, h is judged hard and preempted
    assert scheduler.num_preemptions >= 2
    assert set(reasons.values()) == {FinishReason.STOP}  # deprioritized, not stopped


def test_nothing_is_charged_and_runs_end_at_the_next_probe_point():
    policy = make_policy("dynasor", probe_tokens=32)
    assert isinstance(policy, EarlyStoppingPolicy) and not charges_service(policy)
    a, b = make_request("a"), make_request("b")
    a.num_output_tokens, b.num_output_tokens = 30, 64
    assert policy.steps_until_reorder([a, b]) == 2
    assert policy.steps_until_reorder([]) == sys.maxsize


@pytest.mark.parametrize(("params", "name"), [
    ({"threshold": 0.0}, "threshold"), ({"threshold": 1.5}, "threshold"),
    ({"threshold": math.nan}, "threshold"), ({"low_certainty": 0.6, "budget_tokens": 64}, "low_certainty"),
    ({"low_certainty": -0.1}, "low_certainty"), ({"probe_tokens": 0}, "probe_tokens"),
    ({"probe_tokens": 2.5}, "probe_tokens"), ({"probe_tokens": math.inf}, "probe_tokens"),
    ({"budget_tokens": 0}, "budget_tokens"), ({"stop_hard": "yes"}, "stop_hard"),
    ({"order": "sjf"}, "order"),
])
def test_bad_parameters_are_errors_naming_them(params, name):
    with pytest.raises(ValueError, match=name):
        make_policy("dynasor", **params)
