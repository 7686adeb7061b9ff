"""First come, first served: vLLM's default. Preempts the latest arrival first."""

from __future__ import annotations

from dataclasses import dataclass

from shunter.core.request import Request
from shunter.core.sched.policy import KeyedQueue

__all__ = ["FcfsPolicy"]


@dataclass(slots=True)
class FcfsPolicy:
    name: str = "fcfs"
    has_static_order: bool = True

    def make_queue(self) -> KeyedQueue:
        return KeyedQueue(lambda r: r.arrival_s)

    def victim_key(self, request: Request, now_s: float) -> object:
        return request.arrival_s

    def should_preempt(self, waiting: Request, running: Request, now_s: float) -> bool:
        return False

    def on_scheduled(self, request: Request, num_tokens: int, now_s: float) -> None:
        pass

    def on_finished(self, request: Request, now_s: float) -> None:
        pass
