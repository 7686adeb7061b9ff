"""The early-stop hook: an executor's probe values reach an EarlyStoppingPolicy, and the
requests it returns end as FINISHED_EARLY wherever they are, keeping the tokens they made."""

from __future__ import annotations

from collections.abc import Sequence

from tests.factories import FakeExecutor, add_all, make_request, make_scheduler, run_steps

from shunter.core.clock import ManualClock
from shunter.core.request import Request
from shunter.core.sched.interface import SchedulerOutput, StepResult
from shunter.core.sched.policies.fcfs import FcfsPolicy
from shunter.core.sched.policy import EarlyStoppingPolicy
from shunter.core.sched.scheduler import CoreScheduler, SchedulerConfig
from shunter.core.types import FinishReason, RequestStatus


class ProbingExecutor(FakeExecutor):
    """FakeExecutor that reports a probe value every `interval` sampled tokens of a request."""

    def __init__(self, lengths: dict[str, int], interval: int,
                 values: dict[str, float] | None = None) -> None:
        super().__init__(lengths)
        self.interval = interval
        self.values = values or {}

    def execute(self, output: SchedulerOutput) -> StepResult:
        result = super().execute(output)
        probes = {rid: self.values.get(rid, 0.5) for rid in result.sampled
                  if self.generated[rid] % self.interval == 0}
        return StepResult(result.duration_s, result.sampled, result.stopped, probes)


class StopListed(FcfsPolicy):
    """FCFS that, at the first probe of `trigger`, stops every request in `victims`."""

    def __init__(self, trigger: str, victims: list[str], probe_tokens: int = 3) -> None:
        self.trigger, self.victims, self.probe_tokens = trigger, victims, probe_tokens
        self.seen: list[tuple[str, int, float]] = []
        self.requests: dict[str, Request] = {}

    def early_stops(self, probes: Sequence[tuple[Request, float]], now_s: float) -> list[Request]:
        stops = []
        for request, value in probes:
            self.seen.append((request.request_id, request.num_output_tokens, value))
            if request.request_id == self.trigger:
                stops = [self.requests[rid] for rid in self.victims]
        return stops


def scheduler_with(policy: FcfsPolicy, **config: object) -> CoreScheduler:
    cfg = SchedulerConfig(num_blocks=64, block_size=4, **config)  # type: ignore[arg-type]
    return CoreScheduler(cfg, policy, ManualClock())


def test_probes_reach_the_policy_and_its_stops_end_running_and_queued_requests():
    policy = StopListed("a", ["a", "b", "w"])
    assert isinstance(policy, EarlyStoppingPolicy)
    scheduler = scheduler_with(policy, max_num_seqs=2)
    requests = [make_request(rid, num_prompt_tokens=8, num_output_tokens=20, arrival_s=t)
                for t, rid in enumerate(["a", "b", "w", "x"])]
    policy.requests = {r.request_id: r for r in requests}
    add_all(scheduler, requests)
    executor = ProbingExecutor({r.request_id: 20 for r in requests}, interval=3,
                               values={"a": 0.9, "b": 0.4})
    outputs = run_steps(scheduler, executor, scheduler.clock)
    # a and b ran (two seats), w waited; at a's third token all three end
    assert policy.seen[:2] == [("a", 3, 0.9), ("b", 3, 0.4)]
    finished = {o.request_id: o for o in outputs if o.finish_reason is not None}
    assert {rid: o.finish_reason for rid, o in finished.items()} == {
        "a": FinishReason.EARLY_STOP, "b": FinishReason.EARLY_STOP,
        "w": FinishReason.EARLY_STOP, "x": FinishReason.STOP}
    # the stopping step's token counts: a and b keep it (one output each, token and reason),
    # w gets an output of its own with no token
    assert finished["a"].new_token_ids == finished["b"].new_token_ids == (7,)
    assert finished["w"].new_token_ids == ()
    tokens = {rid: sum(len(o.new_token_ids) for o in outputs if o.request_id == rid)
              for rid in "abwx"}
    assert tokens == {"a": 3, "b": 3, "w": 0, "x": 20}
    assert all(r.status == RequestStatus.FINISHED_EARLY for r in requests[:3])
    assert scheduler.kv.num_free_blocks == 64 and not scheduler.requests  # all blocks back
    assert scheduler.num_waiting_tokens == 0


def test_a_request_that_stops_by_itself_in_the_probe_step_is_not_handed_over():
    policy = StopListed("a", ["a"])
    scheduler = scheduler_with(policy)
    request = make_request("a", num_prompt_tokens=8, num_output_tokens=3)
    policy.requests = {"a": request}
    add_all(scheduler, [request])
    outputs = run_steps(scheduler, ProbingExecutor({"a": 3}, interval=3), scheduler.clock)
    assert policy.seen == [] and outputs[-1].finish_reason == FinishReason.STOP


def test_policies_without_the_hook_ignore_probes():
    scheduler = make_scheduler(policy="vtc")
    add_all(scheduler, [make_request("a", num_prompt_tokens=8, num_output_tokens=9)])
    outputs = run_steps(scheduler, ProbingExecutor({"a": 9}, interval=2), scheduler.clock)
    assert [o.finish_reason for o in outputs][-1] == FinishReason.STOP
    assert sum(len(o.new_token_ids) for o in outputs) == 9


def test_a_step_result_has_no_probes_by_default():
    assert dict(StepResult(0.1, {"a": 1}).probes) == {}
