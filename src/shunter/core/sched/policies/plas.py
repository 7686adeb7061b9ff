"""Program-Level Attained Service (PLAS, from Autellix: Luo et al., "Autellix: An Efficient
Serving Engine for LLM Agents as General Programs", 2025).

An agent program makes many LLM calls; scheduling each call by itself (FCFS) lets long
programs' calls block short programs' at every turn. PLAS ranks a call by the service its whole
program has attained so far (the calls it finished plus those running), least first: a
non-clairvoyant approximation of shortest-program-first that needs no output lengths.

- Program: requests with the same `program_id` (else the same `session_id`; else the request
  alone). Service is `ServiceMeter(skip_cached=True)`: computed prompt tokens x w_in plus output
  tokens x w_out, so a call whose history is a prefix-cache hit is not charged for it again.
- Discretised as Autellix does, into queues: level k holds programs with attained service in
  [T_{k-1}, T_k), T_k = first_level_service x level_ratio^k, `num_levels` levels (the last one
  open-ended). A running call whose program crosses a threshold is demoted with it.
- Order: (priority, level, arrival). A call in a lower (better) level may preempt a running
  call in a higher one (token-granular; the scheduler never preempts a request again before
  it samples a new token, so there are no storms), and under memory pressure the call of the
  highest level (then the latest arrival) goes first.
- Anti-starvation: continuous aging, one level per `aging_s` waited since the call arrived,
  instead of the paper's promotion of calls whose wait/service ratio exceeds a threshold;
  order by `level - waited / aging_s` is order by the time-invariant `level * aging_s +
  arrival_s`, so the queue needs no clock.

Program state is kept while the program has live calls and for the `max_idle_programs` most
recently active idle ones after that (a closed-loop agent's next call arrives after a gap).
"""

from __future__ import annotations

import heapq
import sys
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from shunter.core.request import Request
from shunter.core.sched.policies.service import (
    DEFAULT_INPUT_WEIGHT,
    DEFAULT_OUTPUT_WEIGHT,
    ServiceMeter,
    steps_before_meeting,
)
from shunter.core.types import check_number

__all__ = ["PlasPolicy", "ScanQueue", "program_of"]


def program_of(request: Request) -> str:
    """The program a call belongs to: its program id, else its session, else itself."""
    return request.program_id or request.session_id or f"request:{request.request_id}"


@dataclass(slots=True)
class PlasPolicy:
    first_level_service: float = 2048.0  # T_0: service (w_in/w_out tokens) of the first queue
    level_ratio: float = 2.0
    num_levels: int = 8
    aging_s: float | None = 120.0  # None: no anti-starvation
    input_weight: float = DEFAULT_INPUT_WEIGHT
    output_weight: float = DEFAULT_OUTPUT_WEIGHT
    max_idle_programs: int = 1 << 16
    name: str = "plas"
    has_static_order: bool = False  # levels follow service that grows as calls run
    requires_engine: ClassVar[str | None] = None  # programs are charged on completion there
    service: dict[str, float] = field(default_factory=dict)  # program -> attained service
    meter: ServiceMeter = field(init=False)
    thresholds: list[float] = field(init=False)
    _live: dict[str, int] = field(default_factory=dict)  # program -> calls in the scheduler
    _idle: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _queue: ScanQueue | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        check_number("first_level_service", self.first_level_service, gt=0)
        check_number("level_ratio", self.level_ratio, gt=1)
        check_number("num_levels", self.num_levels, ge=1)
        check_number("max_idle_programs", self.max_idle_programs, ge=0)
        if self.aging_s is not None:
            check_number("aging_s", self.aging_s, gt=0)
        self.meter = ServiceMeter(self.input_weight, self.output_weight, skip_cached=True)
        self.thresholds = [self.first_level_service * self.level_ratio ** k
                           for k in range(self.num_levels - 1)]

    def level(self, request: Request) -> int:
        """The queue of the call's program: 0 for the least served."""
        return bisect_right(self.thresholds, self.service.get(program_of(request), 0.0))

    def key(self, request: Request) -> tuple[float, float, float]:
        level = self.level(request)
        aged = level if self.aging_s is None else level * self.aging_s + request.arrival_s
        return (request.priority, aged, request.arrival_s)

    def make_queue(self) -> ScanQueue:
        self._queue = ScanQueue(self.key)
        return self._queue

    def victim_key(self, request: Request, now_s: float) -> object:
        return (request.priority, self.level(request), request.arrival_s)

    def should_preempt(self, waiting: Request, running: Request, now_s: float) -> bool:
        return ((waiting.priority, self.level(waiting))
                < (running.priority, self.level(running)))

    def steps_until_reorder(self, running: Sequence[Request]) -> int:
        """Decode steps before a running call's program crosses into another level: keys, the
        waiting order and `should_preempt` depend on levels only, and a step charges each
        running call one output token (so a program with c running calls gains c x w_out).
        Bulk charging is exact only for a whole w_out; otherwise it says 0 (no runs)."""
        if not float(self.output_weight).is_integer():
            return 0  # k charges summed one by one may round differently from one charge of k
        calls: dict[str, int] = {}
        for request in running:
            program = program_of(request)
            calls[program] = calls.get(program, 0) + 1
        steps = sys.maxsize
        for program, num_calls in calls.items():
            service = self.service.get(program, 0.0)
            level = bisect_right(self.thresholds, service)
            if level < len(self.thresholds):  # (the last level is open-ended)
                steps = min(steps, steps_before_meeting(
                    service, self.output_weight * num_calls, self.thresholds[level], 0.0))
        return steps

    def on_scheduled(self, request: Request, num_tokens: int, now_s: float) -> None:
        program = program_of(request)
        if not self.meter.has_charged(request):  # first service of this call
            self._live[program] = self._live.get(program, 0) + 1
            self._idle.pop(program, None)
        charged = self.meter.charge(request, num_tokens)
        if charged:
            before = self.service.get(program, 0.0)
            self.service[program] = before + charged
            # keys depend on the level only: the queue's order changes when a program crosses
            # a threshold, not at every token
            if self._queue is not None and (bisect_right(self.thresholds, before)
                                            != bisect_right(self.thresholds, before + charged)):
                self._queue.invalidate()

    def on_finished(self, request: Request, now_s: float) -> None:
        program = program_of(request)
        if self.meter.has_charged(request):
            self._live[program] -= 1
            if not self._live[program]:
                del self._live[program]
                self._idle[program] = None
                while len(self._idle) > self.max_idle_programs:
                    gone, _ = self._idle.popitem(last=False)
                    self.service.pop(gone, None)  # back to level 0, queued calls included
                    if self._queue is not None:
                        self._queue.invalidate()
        self.meter.forget(request)


class ScanQueue:
    """Waiting requests ordered by a key that may change while they wait.

    A heap of (key, arrival sequence, request) with lazy removal; `invalidate` (keys changed)
    marks it stale and the next look rebuilds it with fresh keys: O(waiting) per key change,
    O(log waiting) per add or pop. FIFO among equal keys.
    """

    __slots__ = ("_heap", "_items", "_key", "_seq", "_stale")

    def __init__(self, key: Callable[[Request], tuple[float, ...]]) -> None:
        self._key = key
        self._items: dict[str, tuple[int, Request]] = {}  # request id -> (seq, request)
        self._heap: list[tuple[tuple[float, ...], int, Request]] = []
        self._seq = 0
        self._stale = False

    def invalidate(self) -> None:
        self._stale = True

    def add(self, request: Request) -> None:
        self._items[request.request_id] = (self._seq, request)
        if not self._stale:
            heapq.heappush(self._heap, (self._key(request), self._seq, request))
        self._seq += 1

    def peek(self) -> Request | None:
        if self._stale:
            key = self._key
            self._heap = [(key(r), seq, r) for seq, r in self._items.values()]
            heapq.heapify(self._heap)
            self._stale = False
        heap, items = self._heap, self._items
        while heap:
            _, seq, request = heap[0]
            entry = items.get(request.request_id)
            if entry is not None and entry[0] == seq:
                return request
            heapq.heappop(heap)  # removed, or re-added since (a newer entry stands for it)
        return None

    def pop(self) -> Request:
        request = self.peek()
        assert request is not None, "pop from an empty queue"
        self.remove(request)
        return request

    def remove(self, request: Request) -> None:
        self._items.pop(request.request_id, None)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Request]:
        key = self._key
        return iter([e[1] for e in sorted(self._items.values(), key=lambda e: (key(e[1]), e[0]))])
