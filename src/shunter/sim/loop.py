"""The discrete-event loop: a heap keyed (time_s, priority, seq) over a virtual clock (SimPy's shape).

Events are small records, read-only by contract (slotted with an explicit `__init__`, not
frozen: see `core.sched.interface`); whoever pops one handles it and pushes its follow-ups. At equal
times, lower priority values run first: a step that ends at t is applied before a request that
arrives at t is routed, so the router sees the replica as it is at t.
"""

from __future__ import annotations

from dataclasses import dataclass
from heapq import heappop, heappush
from itertools import count

from shunter.core.clock import ManualClock
from shunter.core.types import RequestSpec

__all__ = ["ARRIVAL_PRIORITY", "STEP_DONE_PRIORITY", "TIMER_PRIORITY", "Arrival", "Event",
           "EventLoop", "StepDone", "Timer"]

STEP_DONE_PRIORITY = 0
TIMER_PRIORITY = 1  # after the steps that end at t (a snapshot sees them), before arrivals
ARRIVAL_PRIORITY = 2


@dataclass(slots=True, init=False)
class Arrival:
    spec: RequestSpec

    def __init__(self, spec: RequestSpec) -> None:
        self.spec = spec


@dataclass(slots=True, init=False)
class StepDone:
    replica_id: int
    generation: int  # the replica's run generation when pushed; stale if it moved on

    def __init__(self, replica_id: int, generation: int = 0) -> None:
        self.replica_id = replica_id
        self.generation = generation


@dataclass(slots=True, init=False)
class Timer:
    """A topology's own event: `kind` says whose (a KV transfer ends, a periodic check is
    due), `key` which of its pending things."""

    kind: str
    key: int

    def __init__(self, kind: str, key: int = 0) -> None:
        self.kind = kind
        self.key = key


Event = Arrival | StepDone | Timer


class EventLoop:
    __slots__ = ("_heap", "_seq", "clock")

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, int, Event]] = []
        self._seq = count()

    def push(self, time_s: float, priority: int, event: Event) -> None:
        heappush(self._heap, (time_s, priority, next(self._seq), event))

    def pop(self) -> Event:
        """Remove the earliest event and move the clock to its time."""
        time_s, _, _, event = heappop(self._heap)
        self.clock.advance_to(time_s)
        return event

    def __len__(self) -> int:
        return len(self._heap)
