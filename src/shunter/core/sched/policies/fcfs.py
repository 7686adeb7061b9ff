"""First come, first served: vLLM's default. Preempts the latest arrival first."""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

from shunter.core.sched.policy import StaticKeyPolicy

__all__ = ["FcfsPolicy"]


@dataclass(slots=True)
class FcfsPolicy(StaticKeyPolicy):
    name: str = "fcfs"
    has_static_order: bool = True

    # order_key(request) -> request.arrival_s, as a C callable rather than a method: the
    # running list is sorted by it before every decode step or run
    order_key = staticmethod(attrgetter("arrival_s"))  # type: ignore[assignment]
