"""D2LPM, routing half: Double Deficit Longest Prefix Match (Cao et al., "Locality-aware Fair
Scheduling in LLM Serving", arXiv 2501.14312).

DLPM is a replica's queue policy: longest prefix match, but a client may only be served while
its deficit counter (refilled by a quantum, charged by the service it gets) is positive, which
bounds how far locality can push one client ahead of another. D2LPM distributes it with a
second deficit at the dispatcher: a counter per (client, replica). This module is that
dispatcher; the replica-local DLPM half is a core queue policy.

For a request of client u (its `tenant`):

1. Guard: replicas whose KV usage is at or above `max_kv_usage` are skipped (all are kept if
   every replica is that full).
2. If no remaining replica has a positive deficit for u, start a new round: every replica's
   deficit for u grows by `quantum_tokens` (as many rounds as needed; counters stay <= quantum,
   so no replica banks credit it did not use).
3. Among replicas with a positive deficit, pick the longest cached prefix match (the router's
   approximate index, `router/prefix_index.py`); ties: less load, then lowest id.
4. Charge the chosen replica's deficit for u with the service the request will cost there:
   uncached prompt tokens + `output_weight` * expected output tokens (the true output length is
   never seen; VTC's weights are w_in = 1, w_out = 2).

So a client keeps its shared prefix on one replica for up to a quantum of service, then spills
to the replica that best matches among those where it has not yet used its share of the round:
locality within a quantum, each client spread evenly across replicas across rounds, and the
memory guard against hot spots. A larger quantum buys locality with balance.

Simplifications (the paper's full text could not be consulted here; this follows its
abstract and published summaries): one quantum for every client (no per-client weights), the
service charged is estimated at dispatch instead of reconciled with what the replica reports,
and the load guard is KV usage from the snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence

from shunter.core.types import RequestSpec, TenantId, check_number
from shunter.router.interface import ReplicaView, RouteDecision
from shunter.router.prefix_index import PrefixIndex

__all__ = ["D2lpmRouter"]


class D2lpmRouter:
    __slots__ = ("deficits", "expected_output_tokens", "index", "max_kv_usage", "output_weight",
                 "quantum_tokens")
    reads_speeds = False  # never reads prefill_tokens_per_s or decode_step_s

    def __init__(self, *, quantum_tokens: float = 8192.0, max_kv_usage: float = 0.9,
                 output_weight: float = 2.0, expected_output_tokens: int = 128) -> None:
        check_number("quantum_tokens", quantum_tokens, gt=0)
        check_number("max_kv_usage", max_kv_usage, gt=0, le=1)
        check_number("output_weight", output_weight, ge=0)
        check_number("expected_output_tokens", expected_output_tokens, ge=0)
        self.quantum_tokens = quantum_tokens
        self.max_kv_usage = max_kv_usage
        self.output_weight = output_weight
        self.expected_output_tokens = expected_output_tokens
        self.deficits: dict[tuple[TenantId, int], float] = {}
        self.index = PrefixIndex()

    def deficit(self, tenant: TenantId, replica_id: int) -> float:
        """Service `tenant` may still get on the replica in this round (tokens)."""
        return self.deficits.get((tenant, replica_id), 0.0)

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        tenant = request.tenant
        guarded = [v for v in replicas if v.kv_usage < self.max_kv_usage] or replicas
        if max(self.deficit(tenant, v.replica_id) for v in guarded) <= 0:
            self._refill(tenant, guarded, replicas)
        candidates = [v for v in guarded if self.deficit(tenant, v.replica_id) > 0]
        blocks = self.index.blocks_of(request)
        matches = dict(zip((v.replica_id for v in candidates),
                           self.index.match_all(blocks, candidates), strict=True))
        chosen = max(candidates, key=lambda v: (
            matches[v.replica_id], -v.num_load_tokens, -v.num_requests, -v.replica_id))
        num_output = min(self.expected_output_tokens,
                         request.max_output_tokens or self.expected_output_tokens)
        service = request.num_prompt_tokens - matches[chosen.replica_id] + self.output_weight * num_output
        self.deficits[(tenant, chosen.replica_id)] = self.deficit(tenant, chosen.replica_id) - service
        self.index.record(blocks, chosen)
        return RouteDecision(chosen.replica_id)

    def _refill(self, tenant: TenantId, guarded: list[ReplicaView],
                replicas: Sequence[ReplicaView]) -> None:
        """Enough rounds of quantum for one guarded replica to go positive; cap at a quantum."""
        best = max(self.deficit(tenant, v.replica_id) for v in guarded)
        num_rounds = int(-best // self.quantum_tokens) + 1
        for v in replicas:
            key = (tenant, v.replica_id)
            self.deficits[key] = min(self.quantum_tokens,
                                     self.deficit(tenant, v.replica_id) + num_rounds * self.quantum_tokens)
