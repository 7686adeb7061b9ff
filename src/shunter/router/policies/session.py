"""Session affinity: a multi-turn session stays on the replica that served its previous turn.

Turn k+1 repeats turn k's prompt and answer as its prefix, so the replica that ran turn k most
likely still caches it. A request with a `session_id` goes to its session's pinned replica
unless that replica is *overloaded*:

    its KV usage >= max_kv_usage, or
    load - min_load > max_load_gap  and  load > max_load_ratio * min_load

(load = waiting + running requests, min over all replicas: SGLang's imbalance test, applied to
the pinned replica). Then, and for the first turn and for requests without a session, the
`fallback` router ("cost" or "least_load") decides, among the other replicas when moving a
session off an overloaded one, and the session is re-pinned there. Pins are
kept for the `max_sessions` most recently seen sessions (LRU), so memory stays bounded on
endless traces. A "cost" fallback is told about pinned routes too, so its prefix index stays
whole.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from shunter.core.types import RequestSpec, check_number
from shunter.router.interface import ReplicaView, RouteDecision
from shunter.router.policies.cost import CostRouter
from shunter.router.policies.least_load import LeastLoadRouter

__all__ = ["SessionRouter"]

FALLBACKS = ("cost", "least_load")


class SessionRouter:
    __slots__ = ("_pins", "fallback", "max_kv_usage", "max_load_gap", "max_load_ratio",
                 "max_sessions")

    def __init__(self, *, fallback: str = "cost", seed: int = 0, max_load_gap: int = 16,
                 max_load_ratio: float = 1.5, max_kv_usage: float = 0.95,
                 max_sessions: int = 100_000) -> None:
        if fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback {fallback!r}; valid: {', '.join(FALLBACKS)}")
        check_number("max_load_gap", max_load_gap, ge=0)
        check_number("max_load_ratio", max_load_ratio, ge=1)
        check_number("max_kv_usage", max_kv_usage, gt=0, le=1)
        check_number("max_sessions", max_sessions, ge=1)
        self.fallback = CostRouter(seed=seed) if fallback == "cost" else LeastLoadRouter()
        self.max_load_gap = max_load_gap
        self.max_load_ratio = max_load_ratio
        self.max_kv_usage = max_kv_usage
        self.max_sessions = max_sessions
        self._pins: OrderedDict[str, int] = OrderedDict()

    def is_overloaded(self, view: ReplicaView, replicas: Sequence[ReplicaView]) -> bool:
        """Whether the pinned replica `view` is too busy to keep its session."""
        min_load = min(v.num_requests for v in replicas)
        load = view.num_requests
        return view.kv_usage >= self.max_kv_usage or (
            load - min_load > self.max_load_gap and load > self.max_load_ratio * min_load)

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        session_id = request.session_id
        if session_id is None:
            return self.fallback.route(request, replicas)
        pinned_id = self._pins.get(session_id)
        pinned = next((v for v in replicas if v.replica_id == pinned_id), None)
        if pinned is None:
            decision = self.fallback.route(request, replicas)
        elif not self.is_overloaded(pinned, replicas):
            if isinstance(self.fallback, CostRouter):
                self.fallback.observe(request, pinned)
            decision = RouteDecision(pinned.replica_id)
        else:  # move the session off its overloaded replica
            others = [v for v in replicas if v is not pinned]
            decision = self.fallback.route(request, others or replicas)
        self._pins[session_id] = decision.replica_id
        self._pins.move_to_end(session_id)
        if len(self._pins) > self.max_sessions:
            self._pins.popitem(last=False)
        return decision
