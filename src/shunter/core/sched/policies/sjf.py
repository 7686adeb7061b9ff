"""Shortest (predicted) job first, with aging against starvation.

Requests run in order of priority, then predicted output tokens (`Request.predicted_output_tokens`,
set by a predictor when the request arrives; the scheduler never sees the truth). A request
without a prediction counts as `unknown_output_tokens`, so with no predictor at all the order is
FCFS. Aging: every second waited forgives `aging_tokens_per_s` predicted tokens,
    effective(t) = predicted - (t - arrival_s) * aging_tokens_per_s,
and ordering by that at any common time t is ordering by the static key
`predicted + arrival_s * aging_tokens_per_s`: the queue stays a heap, and a request predicted
longer than a newcomer by D tokens waits at most D / aging_tokens_per_s seconds for it.

The largest key is preempted first under memory pressure. With `preemptive`, a waiting request
that cannot fit displaces a running one with a larger key (shortest remaining first, with the
prediction made at arrival); off by default, as recomputing a long victim is rarely worth it.
"""

from __future__ import annotations

from dataclasses import dataclass

from shunter.core.request import Request
from shunter.core.sched.policy import StaticKeyPolicy
from shunter.core.types import check_number

__all__ = ["DEFAULT_UNKNOWN_OUTPUT_TOKENS", "SjfPolicy"]

DEFAULT_UNKNOWN_OUTPUT_TOKENS = 256.0  # roughly a chat answer's median length


@dataclass(slots=True)
class SjfPolicy(StaticKeyPolicy):
    aging_tokens_per_s: float | None = 10.0
    unknown_output_tokens: float = DEFAULT_UNKNOWN_OUTPUT_TOKENS
    preemptive: bool = False
    name: str = "sjf"
    has_static_order: bool = True  # keys depend on arrival-time facts only

    def __post_init__(self) -> None:
        if self.aging_tokens_per_s is not None:
            check_number("aging_tokens_per_s", self.aging_tokens_per_s, gt=0)
        check_number("unknown_output_tokens", self.unknown_output_tokens, ge=0)

    def predicted_tokens(self, request: Request) -> float:
        p = request.predicted_output_tokens
        return self.unknown_output_tokens if p is None else p

    def order_key(self, request: Request) -> tuple[int, float, float]:
        predicted = self.predicted_tokens(request)
        if self.aging_tokens_per_s is not None:
            predicted += request.arrival_s * self.aging_tokens_per_s
        return (request.priority, predicted, request.arrival_s)
