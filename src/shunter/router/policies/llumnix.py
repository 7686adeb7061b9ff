"""Llumnix-style dispatch: send the request to the replica with the most *freeness*.

Llumnix (Sun et al., OSDI'24, section 4.4) measures an instance's load as its freeness

    F = (M - sum of virtual usages) / B

with M the instance's KV capacity and B its batch size; a queued request's virtual usage is the
memory it will need, so queued work counts as load before it occupies anything. New requests go
to the freest instance. We follow the released code's dispatch metric (AlibabaPAI/llumnix
`load_computation.py`, `RemainingStepsLoad` without de-fragmentation):

    F = (free blocks - blocks of all waiting prompts) / (running + waiting requests)

and an idle replica (no requests) is infinitely free. Ties (e.g. several idle replicas): more
free blocks, then lowest id. Llumnix's other half, live migration of running requests between
instances, belongs to the simulator's cluster, not to a router.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from shunter.core.types import RequestSpec
from shunter.router.interface import ReplicaView, RouteDecision

__all__ = ["LlumnixRouter", "freeness"]


def freeness(view: ReplicaView) -> float:
    """Free KV blocks left per request once the queue is served (inf when idle)."""
    if view.num_requests == 0:
        return math.inf
    num_waiting_blocks = -(-view.num_waiting_tokens // view.block_size)
    return (view.num_free_blocks - num_waiting_blocks) / view.num_requests


@dataclass(slots=True)
class LlumnixRouter:
    reads_speeds: ClassVar[bool] = False  # never reads prefill_tokens_per_s or decode_step_s

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        best = max(replicas, key=lambda v: (freeness(v), v.num_free_blocks, -v.replica_id))
        return RouteDecision(best.replica_id)
