"""Round robin with a time slice (AIOS: Mei et al., "AIOS: LLM Agent Operating System", 2024).

AIOS's scheduler serves agents' LLM calls FIFO or round robin: a call runs for a time slice,
then, if others wait, its generation is suspended (its context snapshotted) and it goes behind
them; it resumes from the snapshot when its turn comes again. Here:
- the slice is `time_slice_tokens` output tokens (a decode step is the engine's unit of time;
  a slice in tokens keeps the order deterministic and identical in every runtime), so a call's
  round is `output tokens // time_slice_tokens` and the order is (priority, round, arrival):
  no call starts its (k+1)-th slice while another call still waits for its k-th;
- a waiting call displaces a running one that has had more slices (strictly), through the
  scheduler's phase 0; the context is kept by the scheduler's preemption mode: run it with
  `preemption_mode = "swap"` for AIOS's snapshot and restore (recompute also works);
- FIFO, AIOS's other scheduler, is `fcfs`.

This is MLFQ's mechanism (`mlfq`) with one quantum for every level, no skip-join and no
promotion: a request's round is a pure function of its output tokens, so, as there, the
policy keeps no per-request state and the simulator's bulk decode runs stay exact.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from shunter.core.request import Request
from shunter.core.sched.policy import KeyedQueue
from shunter.core.types import check_number

__all__ = ["AiosRrPolicy"]


@dataclass(slots=True)
class AiosRrPolicy:
    time_slice_tokens: int = 32
    name: str = "aios_rr"
    has_static_order: bool = False  # a running call's round grows as it generates
    charges_on_schedule: ClassVar[bool] = False  # rounds follow sampled tokens
    requires_engine: ClassVar[str | None] = (
        "it suspends running calls when their time slice ends; at the gateway nothing runs yet")

    def __post_init__(self) -> None:
        check_number("time_slice_tokens", self.time_slice_tokens, ge=1)
        if isinstance(self.time_slice_tokens, float) and not self.time_slice_tokens.is_integer():
            raise ValueError(f"time_slice_tokens must be a whole number of tokens, got "
                             f"{self.time_slice_tokens!r}")
        self.time_slice_tokens = int(self.time_slice_tokens)

    def round(self, request: Request) -> int:
        """Slices used so far."""
        return request.num_output_tokens // self.time_slice_tokens

    def _key(self, request: Request) -> tuple[int, int, float]:
        return (request.priority, request.num_output_tokens // self.time_slice_tokens,
                request.arrival_s)

    def make_queue(self) -> KeyedQueue:
        return KeyedQueue(self._key)  # a waiting call's round cannot change: it gets no tokens

    def victim_key(self, request: Request, now_s: float) -> object:
        return self._key(request)

    def should_preempt(self, waiting: Request, running: Request, now_s: float) -> bool:
        if waiting.priority != running.priority:
            return waiting.priority < running.priority
        return self.round(running) > self.round(waiting)

    def steps_until_reorder(self, running: Sequence[Request]) -> int:
        """Decode steps before a running call ends its slice: until then no key changes."""
        slice_ = self.time_slice_tokens
        steps = sys.maxsize
        for request in running:
            steps = min(steps, slice_ - request.num_output_tokens % slice_)
        return steps

    def on_scheduled(self, request: Request, num_tokens: int, now_s: float) -> None:
        pass

    def on_finished(self, request: Request, now_s: float) -> None:
        pass
