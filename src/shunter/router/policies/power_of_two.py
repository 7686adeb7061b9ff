"""Power of two choices: sample two distinct replicas at random, send to the less loaded.

Mitzenmacher's result: two random probes cut the maximum queue from O(log n / log log n) to
O(log log n), at the cost of reading only two snapshots; "less loaded" is `least_load`'s key.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from shunter.core.types import RequestSpec
from shunter.router.interface import ReplicaView, RouteDecision
from shunter.router.policies.least_load import least_loaded

__all__ = ["PowerOfTwoRouter"]


class PowerOfTwoRouter:
    __slots__ = ("rng",)
    reads_speeds = False  # never reads prefill_tokens_per_s or decode_step_s

    def __init__(self, *, seed: int = 0, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random(seed)

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        if len(replicas) == 1:
            return RouteDecision(replicas[0].replica_id)
        return RouteDecision(least_loaded(self.rng.sample(replicas, 2)).replica_id)
