"""Priority scheduling with aging and a preemption threshold (vLLM's `priority` policy, plus aging).

Smaller `priority` runs first. With aging, a request's effective priority improves by one level
for every `aging_s` it has waited since arrival, which ends starvation of low priorities:
    effective(t) = priority - (t - arrival_s) / aging_s
Ordering by effective priority at any common time t is ordering by the static key
`priority * aging_s + arrival_s`, so the waiting queue stays a heap.

A waiting request preempts a running one only when it is better by at least
`preemption_threshold` levels (effective priorities, at the current time).
"""

from __future__ import annotations

from dataclasses import dataclass

from shunter.core.request import Request
from shunter.core.sched.policy import StaticKeyPolicy
from shunter.core.types import check_number

__all__ = ["PriorityPolicy"]


@dataclass(slots=True)
class PriorityPolicy(StaticKeyPolicy):
    aging_s: float | None = 60.0
    preemption_threshold: float = 1.0
    name: str = "priority"
    has_static_order: bool = True  # continuous aging keeps the relative order fixed

    def __post_init__(self) -> None:
        if self.aging_s is not None:
            check_number("aging_s", self.aging_s, gt=0)
        check_number("preemption_threshold", self.preemption_threshold, gt=0)

    def order_key(self, request: Request) -> tuple[float, float]:
        if self.aging_s is None:
            return (request.priority, request.arrival_s)
        return (request.priority * self.aging_s + request.arrival_s, request.arrival_s)

    def effective_priority(self, request: Request, now_s: float) -> float:
        if self.aging_s is None:
            return float(request.priority)
        return request.priority - (now_s - request.arrival_s) / self.aging_s

    def should_preempt(self, waiting: Request, running: Request, now_s: float) -> bool:
        gap = self.effective_priority(running, now_s) - self.effective_priority(waiting, now_s)
        return gap >= self.preemption_threshold
