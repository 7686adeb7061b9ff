"""Least load: the replica with the fewest queued plus running tokens (ties: fewest requests, lowest id)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from shunter.core.types import RequestSpec
from shunter.router.interface import ReplicaView, RouteDecision

__all__ = ["LeastLoadRouter", "least_loaded", "load_key"]


def load_key(view: ReplicaView) -> tuple[int, int, int]:
    """Sort key of "less loaded first": tokens, then requests, then replica id."""
    return (view.num_load_tokens, view.num_requests, view.replica_id)


def least_loaded(replicas: Sequence[ReplicaView]) -> ReplicaView:
    """The least loaded of `replicas` (never empty)."""
    return min(replicas, key=load_key)


@dataclass(slots=True)
class LeastLoadRouter:
    reads_speeds: ClassVar[bool] = False  # never reads prefill_tokens_per_s or decode_step_s
    # the least load_key wins (`router.interface.min_key`): tokens and requests only grow while
    # a replica's steps run on
    min_key: ClassVar[Callable[[ReplicaView], tuple[int, int, int]]] = staticmethod(load_key)

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        return RouteDecision(least_loaded(replicas).replica_id)
