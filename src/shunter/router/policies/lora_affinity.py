"""LoRA adapter affinity: send a request where its adapter already is, unless that replica is
much busier than the least loaded one.

Serving many adapters, a replica can batch only `max_loras` of them at once and pays a host
-> GPU copy (or a storage read) for each adapter it has to load; spreading every adapter over
every replica multiplies both. dLoRA (Wu et al., OSDI 2024) and vLLM production-stack's
LoRA-aware routing send a request to a replica that holds its adapter and fall back to load
balancing. Here: among the replicas whose view lists the adapter (`ReplicaView.lora_ids`: in
a GPU slot, or wanted by a request queued or running there), the least loaded (tokens, then
requests, then id) gets the request if its load is at most `max_imbalance` times the least
loaded replica's plus this request's prompt; otherwise, or when no replica has the adapter,
the least loaded replica does, which then holds it too (so a hot adapter spreads over as many
replicas as its load needs). Requests without an adapter go to the least loaded replica.
"""

from __future__ import annotations

from collections.abc import Sequence

from shunter.core.types import RequestSpec, check_number
from shunter.router.interface import ReplicaView, RouteDecision
from shunter.router.policies.least_load import least_loaded

__all__ = ["LoraAffinityRouter"]


class LoraAffinityRouter:
    __slots__ = ("max_imbalance",)
    reads_speeds = False  # never reads prefill_tokens_per_s or decode_step_s
    # the gateway neither maps requests to adapters nor tracks them per backend (yet)
    live_refusal = ("the gateway does not serve LoRA adapters: its replicas' views carry no "
                    "adapters, so it would route as least_load")

    def __init__(self, *, max_imbalance: float = 2.0) -> None:
        check_number("max_imbalance", max_imbalance, ge=1)
        self.max_imbalance = max_imbalance

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        best = least_loaded(replicas)
        lora = request.lora_id
        if lora is None:
            return RouteDecision(best.replica_id)
        holders = [v for v in replicas if lora in v.lora_ids]
        if holders:
            pick = least_loaded(holders)
            bound = self.max_imbalance * (best.num_load_tokens + request.num_prompt_tokens)
            if pick.num_load_tokens <= bound:
                return RouteDecision(pick.replica_id)
        return RouteDecision(best.replica_id)
