"""Random: a uniformly random replica, from an injected RNG (a baseline that ignores load)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from shunter.core.types import RequestSpec
from shunter.router.interface import ReplicaView, RouteDecision

__all__ = ["RandomRouter"]


class RandomRouter:
    """Each request goes to a replica drawn uniformly from `rng` (or `random.Random(seed)`)."""

    __slots__ = ("rng",)
    is_load_blind = True  # decisions never read replica state (sim.partition)

    def __init__(self, *, seed: int = 0, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random(seed)

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        return RouteDecision(self.rng.choice(replicas).replica_id)
