"""Least load: the replica with the fewest queued plus running tokens (ties: fewest requests, lowest id)."""

from __future__ import annotations

from dataclasses import dataclass

from shunter.core.types import RequestSpec
from shunter.router.interface import ReplicaView, RouteDecision

__all__ = ["LeastLoadRouter"]


@dataclass(slots=True)
class LeastLoadRouter:
    def route(self, request: RequestSpec, replicas: list[ReplicaView]) -> RouteDecision:
        best = min(replicas, key=lambda v: (v.num_load_tokens, v.num_requests, v.replica_id))
        return RouteDecision(best.replica_id)
