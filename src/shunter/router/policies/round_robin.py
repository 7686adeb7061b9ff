"""Round robin: the i-th request goes to replica i mod N, whatever the load."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from shunter.core.types import RequestSpec
from shunter.router.interface import ReplicaView, RouteDecision

__all__ = ["RoundRobinRouter"]


@dataclass(slots=True)
class RoundRobinRouter:
    is_load_blind: ClassVar[bool] = True  # decisions never read replica state (sim.partition)
    num_routed: int = 0

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        view = replicas[self.num_routed % len(replicas)]
        self.num_routed += 1
        return RouteDecision(view.replica_id)
