"""Ending requests at the policy's word, from probes of their progress (`EarlyStoppingPolicy`).

An executor that probes (the simulator reading a reasoning trace, an engine measuring its own
tokens) reports a certainty value for each request whose output reached a probe point in a
step (`StepResult.probes`). After the step's tokens are applied, the scheduler hands the values
of the requests still live to the policy, which returns the requests to end now: running or
queued (a reasoning program's branches are stopped together, wherever each one is). Each ends
with `RequestStatus.FINISHED_EARLY` (`FinishReason.EARLY_STOP`), its blocks freed, its tokens
so far kept: a request that sampled in this step keeps that token, and its output of the step
carries the reason; any other gets an output of its own, with no token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from shunter.core.clock import Clock
from shunter.core.request import Request
from shunter.core.sched.interface import RequestOutput
from shunter.core.sched.policy import EarlyStoppingPolicy, Policy
from shunter.core.types import RequestId, RequestStatus

__all__ = ["EndingScheduler", "stop_early"]


class EndingScheduler(Protocol):
    """What ending requests early needs of the scheduler (`CoreScheduler`, which calls it)."""

    policy: Policy
    requests: dict[RequestId, Request]  # the live ones
    clock: Clock

    def abort(self, request_id: RequestId, status: RequestStatus = ...,
              ) -> RequestOutput | None:
        """End a live request wherever it is, with `status`; None if not live."""
        ...


def stop_early(scheduler: EndingScheduler, probes: Mapping[RequestId, float],
               outputs: list[RequestOutput]) -> None:
    """Pass a step's probe values to the scheduler's policy, if it stops requests early, and
    end what it stops; `outputs` (the step's, from `update`) gain the finish reasons."""
    policy = scheduler.policy
    if not isinstance(policy, EarlyStoppingPolicy):
        return  # (an executor probing for nobody: nothing listens)
    live = scheduler.requests
    probed: list[tuple[Request, float]] = []
    for request_id, value in probes.items():
        request = live.get(request_id)
        if request is not None:  # (not one that stopped by itself in this step)
            probed.append((request, value))
    if not probed:
        return
    stops = policy.early_stops(probed, scheduler.clock.now())
    if not stops:
        return
    index = {out.request_id: i for i, out in enumerate(outputs)}
    for request in stops:
        ended = scheduler.abort(request.request_id, RequestStatus.FINISHED_EARLY)
        if ended is None:
            continue  # (listed twice, or no longer live)
        i = index.get(request.request_id)
        if i is None:
            outputs.append(ended)
        else:
            outputs[i] = RequestOutput(ended.request_id, outputs[i].new_token_ids,
                                       ended.finish_reason,
                                       num_cached_tokens=ended.num_cached_tokens)
