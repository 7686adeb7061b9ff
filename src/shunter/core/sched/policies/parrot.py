"""Application-centric order (Parrot: Lin et al., "Parrot: Efficient Serving of LLM-based
Applications with Semantic Variable", OSDI'24).

A request-level scheduler (FCFS) interleaves the calls of every application in flight, so each
application's last call, which its user waits for, finishes late; Parrot schedules for the
application's end-to-end latency instead: the calls of an application that arrived earlier go
first, its later calls (released as their inputs are produced) included, and the calls of one
application stage, issued together, run together as a group. Here: the key is (priority, the
application's start, the call's arrival), where an application is the calls sharing a
`program_id` (else a `session_id`; else the call alone) and its start is the arrival of the
first of its calls this scheduler saw. The key of a call never changes, so the policy is a
static order at either tier; it does not preempt (Parrot does not).

Parrot's other mechanisms live elsewhere in Shunter: dependent calls released without a
client round trip (the simulator's follow-ups, `shunter.workload.dag`), prefix sharing (the
prefix cache and the `prefix_affinity` / `cost` routers).

State: each application's start, kept for the `max_apps` most recent applications; an older
application's later calls rank by their own arrival (a bound on memory, reached only past that
many applications in flight).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from shunter.core.request import Request
from shunter.core.sched.policies.plas import program_of
from shunter.core.sched.policy import StaticKeyPolicy
from shunter.core.types import check_number

__all__ = ["ParrotPolicy"]


@dataclass(slots=True)
class ParrotPolicy(StaticKeyPolicy):
    max_apps: int = 1 << 16
    name: str = "parrot"
    has_static_order: bool = True
    _start: OrderedDict[str, float] = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        check_number("max_apps", self.max_apps, ge=1)

    def order_key(self, request: Request) -> tuple[int, float, float]:
        app = program_of(request)
        start = self._start.get(app)
        if start is None:
            start = self._start[app] = request.arrival_s
            if len(self._start) > self.max_apps:
                self._start.popitem(last=False)
        return (request.priority, start, request.arrival_s)
