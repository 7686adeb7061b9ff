"""The keyed waiting queue most policies share: a heap over a static key, lazy removal.

Its own module so it can be compiled with the simulator's hot path (README, "Compiled build")
while the policy classes, which users subclass, stay interpreted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from heapq import heappop, heappush
from itertools import count

from shunter.core.request import Request

__all__ = ["KeyedQueue"]


class KeyedQueue:
    """A heap over a static key, with lazy removal; FIFO among equal keys."""

    __slots__ = ("_aside", "_heap", "_key", "_live", "_seq")

    def __init__(self, key: Callable[[Request], object]) -> None:
        self._key = key
        self._heap: list[tuple[object, int, Request]] = []
        self._live: dict[str, int] = {}  # request id -> seq of its live heap entry
        self._seq = count()
        self._aside: list[tuple[object, int, Request]] = []  # heads set aside (core.sched.lora)

    def add(self, request: Request) -> None:
        seq = next(self._seq)
        self._live[request.request_id] = seq
        heappush(self._heap, (self._key(request), seq, request))

    def _drop_dead(self) -> None:
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][2].request_id) != heap[0][1]:
            heappop(heap)

    def peek(self) -> Request | None:
        self._drop_dead()
        return self._heap[0][2] if self._heap else None

    def pop(self) -> Request:
        self._drop_dead()
        _, _, request = heappop(self._heap)
        del self._live[request.request_id]
        return request

    def remove(self, request: Request) -> None:
        self._live.pop(request.request_id, None)

    def set_aside(self) -> Request:
        """Take the head out of the order until `put_back` (still queued and counted)."""
        self._drop_dead()
        entry = heappop(self._heap)
        self._aside.append(entry)
        return entry[2]

    def put_back(self) -> None:
        """Return the heads set aside, each with its old key and sequence number: the order
        is exactly as before."""
        for entry in self._aside:
            heappush(self._heap, entry)
        self._aside.clear()

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[Request]:
        live = self._live
        entries = sorted(e for e in self._heap if live.get(e[2].request_id) == e[1])
        return iter([e[2] for e in entries])
