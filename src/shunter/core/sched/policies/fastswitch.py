"""Fairness-driven priority changes with frequent preemption: the `fastswitch` policy (the
scheduling side of Shen et al., "FastSwitch: Optimizing Context Switching Efficiency in
Fairness-aware LLM Serving", 2024).

FastSwitch's point is the *mechanism*: a fairness scheduler changes priorities often, and
every change that preempts a request costs a context switch, which vLLM makes expensive
(scattered 16-token blocks copied one by one, the GPU idle meanwhile) or wasteful (recompute).
This policy produces that regime: a request's priority drops by one level per `quantum_tokens`
tokens of service it received (least-attained-service round robin, as fairness schedulers do),
so under memory pressure a waiting request that has received less service preempts a running
one every quantum. Order: (priority class, level, arrival); preemption needs a better
(class, level); under memory pressure the highest level (then latest arrival) goes first; a
preempted request may not be preempted again before it samples a token (scheduler rule).

The mechanism is configured on the scheduler, so the same policy runs over each: recompute
preemption (vLLM v1), swap with LRU-scattered blocks (vLLM v0 swap), or swap with contiguous
block runs (`kv_allocation="contiguous"`, FastSwitch's block groups). With prefix caching on,
a recomputed or follow-up turn also re-hits its KV still on the GPU.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from shunter.core.request import Request
from shunter.core.sched.policies.plas import ScanQueue
from shunter.core.sched.policies.service import ServiceMeter, steps_before_meeting
from shunter.core.types import check_number

__all__ = ["FastSwitchPolicy"]


@dataclass(slots=True)
class FastSwitchPolicy:
    quantum_tokens: float = 256.0  # service between two priority drops (prompt + output tokens)
    name: str = "fastswitch"
    has_static_order: bool = False  # levels drop as service is charged
    requires_engine: ClassVar[str | None] = (
        "it preempts running requests every quantum of service (context switches inside an "
        "engine); at the gateway every waiting request has received none")
    served: dict[str, float] = field(default_factory=dict)  # request id -> tokens served
    meter: ServiceMeter = field(init=False)
    _queue: ScanQueue | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        check_number("quantum_tokens", self.quantum_tokens, gt=0)
        self.meter = ServiceMeter(1.0, 1.0, skip_cached=True)

    def level(self, request: Request) -> int:
        return int(self.served.get(request.request_id, 0.0) // self.quantum_tokens)

    def _key(self, request: Request) -> tuple[float, ...]:
        return (request.priority, self.level(request), request.arrival_s)

    def make_queue(self) -> ScanQueue:
        self._queue = ScanQueue(self._key)
        return self._queue

    def victim_key(self, request: Request, now_s: float) -> object:
        return self._key(request)

    def should_preempt(self, waiting: Request, running: Request, now_s: float) -> bool:
        return self._key(waiting)[:2] < self._key(running)[:2]

    def steps_until_reorder(self, running: Sequence[Request]) -> int:
        """Decode steps before a running request's level drops (the simulator's decode runs):
        keys, the waiting order and `should_preempt` depend on levels only, waiting requests are
        charged nothing, and a decode step charges a running request at most one output token
        (weight 1, so k steps charged at once add up exactly as one by one)."""
        quantum, rate = self.quantum_tokens, self.meter.output_weight
        steps = sys.maxsize
        for request in running:
            served = self.served.get(request.request_id, 0.0)
            level = served // quantum
            n = steps_before_meeting(served, rate, (level + 1) * quantum, 0.0)
            while n > 1 and (served + (n - 1) * rate) // quantum != level:
                n -= 1  # (level + 1) * quantum rounded above the true boundary
            steps = min(steps, n)
        return steps

    def on_scheduled(self, request: Request, num_tokens: int, now_s: float) -> None:
        charged = self.meter.charge(request, num_tokens)
        if charged:
            self.served[request.request_id] = self.served.get(request.request_id, 0.0) + charged

    def on_finished(self, request: Request, now_s: float) -> None:
        self.meter.forget(request)
        self.served.pop(request.request_id, None)
