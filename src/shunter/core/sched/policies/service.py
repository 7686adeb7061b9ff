"""Service accounting shared by the charging policies (VTC, DLPM, PLAS, FastSwitch).

A scheduled chunk of `n` tokens for a request with `c` computed tokens covers token positions
[c, c + n) (hooks run before the step's tokens count as computed, in `schedule` and in decode
runs alike). Of those, positions below the prompt length P are prompt tokens, and every
position >= P - 1 samples one output token (the last prompt position samples the first). So a
request that ran to completion is charged P prompt tokens and exactly its O output tokens, as
`shunter.metrics` counts service (w_in = 1, w_out = 2 by default).

VTC and DLPM charge a request's prompt when it is admitted (`charge_admitted`, from the
queue's `pop`), as both papers do: otherwise a tenant in credit could have a whole step's worth
of requests admitted before the step's service is counted. The last prompt position is left
to `charge`, since computing it samples the first output token.

Each position is charged once: a request recomputing after a recompute-preemption, or
re-hitting its own blocks, is not charged again (that is the engine's cost, not service the
tenant received). `skip_cached=True` (DLPM, PLAS) charges only tokens that are computed, so
prefix-cache hits are free; `skip_cached=False` (VTC) charges the whole prompt.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from shunter.core.request import Request
from shunter.core.sched.policy import ScheduledChunk
from shunter.core.types import RequestId, TenantId, check_number

__all__ = ["DEFAULT_INPUT_WEIGHT", "DEFAULT_OUTPUT_WEIGHT", "ServiceMeter", "steps_before_meeting",
           "steps_before_tenants_swap", "tenant_rates"]

DEFAULT_INPUT_WEIGHT = 1.0  # VTC's w_in: service per prompt token
DEFAULT_OUTPUT_WEIGHT = 2.0  # VTC's w_out: service per output token


@dataclass(slots=True)
class ServiceMeter:
    """Weighted service of scheduled chunks, each token position charged at most once."""

    input_weight: float = DEFAULT_INPUT_WEIGHT
    output_weight: float = DEFAULT_OUTPUT_WEIGHT
    skip_cached: bool = False
    _charged: dict[RequestId, int] = field(default_factory=dict)  # positions [0, n) charged

    def __post_init__(self) -> None:
        check_number("input_weight", self.input_weight, ge=0)
        check_number("output_weight", self.output_weight, ge=0)

    def charge(self, request: Request, num_tokens: int) -> float:
        """Service of a chunk of `num_tokens` scheduled now (call from `on_scheduled`)."""
        start = request.num_computed_tokens
        end = start + num_tokens
        charged = self._charged.get(request.request_id, 0)
        if end <= charged:
            return 0.0
        first = max(start, charged) if self.skip_cached else charged
        self._charged[request.request_id] = end
        prompt = request.num_prompt_tokens
        num_input = max(0, min(end, prompt) - first)
        num_output = end - max(first, prompt - 1)
        return self.input_weight * num_input + self.output_weight * max(0, num_output)

    def charge_tenants(self, scheduled: Iterable[tuple[ScheduledChunk, int]],
                       counters: dict[TenantId, float], weights: dict[TenantId, float]) -> None:
        """`charge` of each (request, num_tokens) of a step in turn, each service divided by
        the tenant's weight (1 where absent) and added to `counters[tenant]` (VTC's counters).
        The arithmetic of `charge`, inlined: this runs for every running request every step
        (tests/core/sched/policies/test_service_meter.py: the two agree to the bit). Reads only
        the `ScheduledChunk` fields, so inside vLLM it takes vLLM's own requests."""
        charged_upto, w_in, w_out = self._charged, self.input_weight, self.output_weight
        skip_cached = self.skip_cached
        for request, num_tokens in scheduled:
            start = request.num_computed_tokens
            end = start + num_tokens
            request_id = request.request_id
            charged = charged_upto.get(request_id, 0)
            if end <= charged:
                continue
            first = (start if start > charged else charged) if skip_cached else charged
            charged_upto[request_id] = end
            prompt = request.num_prompt_tokens
            if first >= prompt:  # output positions only (a decode): the same float
                service = w_out * (end - first)
            else:
                num_input = (end if end < prompt else prompt) - first
                num_output = end - (first if first > prompt - 1 else prompt - 1)
                service = (w_in * (num_input if num_input > 0 else 0)
                           + w_out * (num_output if num_output > 0 else 0))
            if service:
                tenant = request.tenant
                counters[tenant] = counters.get(tenant, 0.0) + service / weights.get(tenant, 1.0)

    def charge_admitted(self, request: Request) -> float:
        """Service of the prompt a request was just admitted with (all but its last position;
        with `skip_cached`, none of the positions already computed, e.g. prefix-cache hits)."""
        end = request.num_prompt_tokens - 1
        charged = self._charged.get(request.request_id, 0)
        first = max(request.num_computed_tokens, charged) if self.skip_cached else charged
        if end <= first:
            return 0.0
        self._charged[request.request_id] = end
        return self.input_weight * (end - first)

    def has_charged(self, request: Request) -> bool:
        """Whether any chunk of the request was charged since it entered the scheduler."""
        return request.request_id in self._charged

    def forget(self, request: Request) -> None:
        """The request left the scheduler."""
        self._charged.pop(request.request_id, None)


def steps_before_meeting(low: float, low_rate: float, high: float, high_rate: float) -> int:
    """Decode steps j = 1, 2, ... (step j decides on j - 1 steps' charges) over which `low`,
    growing by `low_rate` a step, stays below `high`, growing by `high_rate` (at equality a
    tie-break may reorder); sys.maxsize if it never catches up. The charging policies'
    `steps_until_reorder` bound (a level threshold is a `high` that does not move)."""
    gain = low_rate - high_rate
    if gain <= 0:
        return sys.maxsize
    steps = max(1, math.ceil((high - low) / gain))
    while steps > 1 and low + (steps - 1) * low_rate >= high + (steps - 1) * high_rate:
        steps -= 1  # the division rounded up past the exact count
    return steps


def tenant_rates(running: Sequence[Request], per_request: float) -> dict[TenantId, float]:
    """How fast each tenant's counter moves a decode step: `per_request` for each of its
    running requests (the tenant-fair policies' `steps_until_reorder`)."""
    rates: dict[TenantId, float] = {}
    for request in running:
        rates[request.tenant] = rates.get(request.tenant, 0.0) + per_request
    return rates


def steps_before_tenants_swap(running: Sequence[Request], victim_key: Callable[[Request], object],
                              value: Callable[[TenantId], float],
                              rates: dict[TenantId, float]) -> int:
    """Decode steps before two running requests of different tenants (one priority) swap in
    the order `victim_key` sorts them by, their tenants' `value`s moving at `rates`: linearly
    moving keys first swap between neighbours, so neighbours are enough."""
    steps = sys.maxsize
    order = sorted(running, key=victim_key)  # type: ignore[arg-type]
    for first, second in pairwise(order):
        if first.tenant != second.tenant and first.priority == second.priority:
            steps = min(steps, steps_before_meeting(value(first.tenant), rates[first.tenant],
                                                    value(second.tenant), rates[second.tenant]))
    return steps
