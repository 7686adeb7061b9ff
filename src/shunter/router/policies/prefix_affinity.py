"""Prefix affinity: the SGLang router's cache-aware rule, over our own approximate prefix index.

The rule (sgl-project/sglang `sgl-router/src/policies/cache_aware.rs`, documented in
`docs/router/router.md`, defaults from `sgl-router/py_src/sglang_router/router_args.py`):

1. The cluster is *imbalanced* when both hold, over the replicas' loads (SGLang: requests in
   flight per worker; here `num_waiting + num_running`):
       max_load - min_load > balance_abs_threshold   and   max_load > balance_rel_threshold * min_load
   Then the request goes to the least loaded replica (shortest queue), whatever it has cached.
2. Otherwise find the replica with the longest cached prefix match. If the match rate
   (matched tokens / prompt tokens) exceeds `cache_threshold`, send it there; if not, send it
   to the replica whose index is smallest (SGLang: "smallest tree", most room to cache).
3. Either way, the prompt is recorded in the chosen replica's index (SGLang inserts in both
   branches too).

Defaults are SGLang's launcher defaults (cache 0.3, abs 64, rel 1.5); its Rust library defaults
are 0.5 / 32 / 1.1. Ties: fewer requests, then lower replica id.
"""

from __future__ import annotations

from collections.abc import Sequence

from shunter.core.types import RequestSpec, check_number
from shunter.router.interface import ReplicaView, RouteDecision
from shunter.router.prefix_index import PrefixIndex

__all__ = ["PrefixAffinityRouter", "is_imbalanced"]


def is_imbalanced(loads: list[int], abs_threshold: float, rel_threshold: float) -> bool:
    """SGLang's test: the spread exceeds the absolute threshold AND the max exceeds rel * min."""
    max_load, min_load = max(loads), min(loads)
    return max_load - min_load > abs_threshold and max_load > rel_threshold * min_load


class PrefixAffinityRouter:
    __slots__ = ("balance_abs_threshold", "balance_rel_threshold", "cache_threshold", "index")
    reads_speeds = False  # never reads prefill_tokens_per_s or decode_step_s

    def __init__(self, *, cache_threshold: float = 0.3, balance_abs_threshold: int = 64,
                 balance_rel_threshold: float = 1.5) -> None:
        check_number("cache_threshold", cache_threshold, ge=0, le=1)
        check_number("balance_abs_threshold", balance_abs_threshold, ge=0)
        check_number("balance_rel_threshold", balance_rel_threshold, ge=1)
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.index = PrefixIndex()

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        blocks = self.index.blocks_of(request)
        loads = [v.num_requests for v in replicas]
        if is_imbalanced(loads, self.balance_abs_threshold, self.balance_rel_threshold):
            chosen = min(replicas, key=lambda v: (v.num_requests, v.num_load_tokens, v.replica_id))
        else:
            matches = self.index.match_all(blocks, replicas)
            best = max(range(len(replicas)), key=lambda i: (
                matches[i], -replicas[i].num_requests, -replicas[i].replica_id))
            if matches[best] / request.num_prompt_tokens > self.cache_threshold:
                chosen = replicas[best]
            else:
                chosen = min(replicas, key=lambda v: (
                    self.index.num_tokens(v.replica_id), v.num_requests, v.replica_id))
        self.index.record(blocks, chosen)
        return RouteDecision(chosen.replica_id)
