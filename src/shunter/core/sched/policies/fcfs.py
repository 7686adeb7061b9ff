"""First come, first served: vLLM's default. Preempts the latest arrival first."""

from __future__ import annotations

from dataclasses import dataclass

from shunter.core.request import Request
from shunter.core.sched.policy import StaticKeyPolicy

__all__ = ["FcfsPolicy"]


@dataclass(slots=True)
class FcfsPolicy(StaticKeyPolicy):
    name: str = "fcfs"
    has_static_order: bool = True

    def order_key(self, request: Request) -> float:
        return request.arrival_s
