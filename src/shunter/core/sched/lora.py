"""vLLM's `max_loras`: at most that many distinct LoRA adapters in one step.

A GPU holds `max_loras` adapter slots; every request of a step needs its adapter in one. vLLM
v1's scheduler passes over a waiting request whose adapter would make the step's adapters
exceed the limit and goes on down the queue (`skipped_waiting_requests`), while running
requests keep their places. Here the limit holds over all running requests, scheduled this step
or not, so every step (a subset of them) stays within it and a running request's adapter stays
resident while it runs (what the simulator's bulk decode runs rely on: `sim.decode_run`).

Passing a request over needs a queue that can set its head aside and put it back in place
(`SkippingQueue`: the heap `KeyedQueue` of every static-order policy); a queue that cannot (a
policy's own queue, whose `pop` may charge or reorder) makes the blocked head wait instead,
stopping admissions for the step. At most `max_num_seqs` requests are passed over per step
(vLLM scans the whole queue; more could not be admitted in one step anyway).

With `max_loras` = 0 the scheduler holds no `LoraSlots` and checks nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from shunter.core.request import Request
from shunter.core.sched.policy import WaitingQueue

__all__ = ["LoraSlots", "SkippingQueue", "num_distinct_loras"]


@runtime_checkable
class SkippingQueue(Protocol):
    """A waiting queue whose head can be set aside for a step and put back in place."""

    def set_aside(self) -> Request:
        """Take the head out of the order (it stays queued and counted) until `put_back`."""
        ...

    def put_back(self) -> None:
        """Return every request set aside to its old place in the order."""
        ...


def num_distinct_loras(requests: Sequence[Request]) -> int:
    """How many distinct adapters these requests run with (base-model requests need none)."""
    return len({r.lora_id for r in requests if r.lora_id is not None})


class LoraSlots:
    """The running requests' adapters, and the waiting requests that may join them."""

    __slots__ = ("_active", "_num_aside", "_queue", "max_loras")

    def __init__(self, max_loras: int, waiting: WaitingQueue) -> None:
        assert max_loras >= 1, "no LoraSlots without a LoRA limit"
        self.max_loras = max_loras
        self._queue: SkippingQueue | None = (waiting if isinstance(waiting, SkippingQueue)
                                             else None)
        self._active: set[str] = set()
        self._num_aside = 0

    def can_join(self, request: Request, running: Sequence[Request]) -> bool:
        """Whether `request` may run beside `running` (a request attached from elsewhere)."""
        lora = request.lora_id
        if lora is None:
            return True
        active = {r.lora_id for r in running if r.lora_id is not None}
        return lora in active or len(active) < self.max_loras

    def begin(self, running: Sequence[Request]) -> None:
        """Start a step's admissions beside `running`."""
        self._active = {r.lora_id for r in running if r.lora_id is not None}

    def next_waiting(self, waiting: WaitingQueue, max_skips: int) -> Request | None:
        """The best waiting request (policy order) whose adapter fits beside the running and
        just-admitted ones, passing over up to `max_skips` whose adapters do not; None when
        there is none (or the queue cannot pass one over). Its adapter counts as taken from
        now on: the caller admits it or admits nothing more this step."""
        request = waiting.peek()
        active, queue = self._active, self._queue
        while request is not None and request.lora_id is not None and \
                request.lora_id not in active and len(active) >= self.max_loras:
            if queue is None or self._num_aside >= max_skips:
                return None
            queue.set_aside()
            self._num_aside += 1
            request = waiting.peek()
        if request is not None and request.lora_id is not None:
            active.add(request.lora_id)
        return request

    def end(self) -> None:
        """Put the requests passed over this step back in their places."""
        if self._num_aside:
            assert self._queue is not None
            self._queue.put_back()
            self._num_aside = 0
