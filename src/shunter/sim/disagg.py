"""Prefill/decode disaggregation (Splitwise, DistServe): two pools and a KV transfer between.

A request arrives; `decode_router` picks its decode replica among the decode pool and
`router` its prefill replica among the prefill pool (both at arrival, as Splitwise's cluster
scheduler does, so the transfer target is known). The prefill replica computes the prompt and
samples the first token (TTFT is measured there); at that step's end the request leaves it
(`SimReplica.detach`: its blocks are freed, full ones stay in that replica's prefix cache) and
its KV crosses the link in `cost_model.kv_transfer_time_s(computed tokens, link bandwidth)`,
the prefill replica's model fixing the bytes per token. It then joins the decode replica's
batch at that replica's next step boundary (`attach`), and decodes there. A decode replica
without room keeps arrivals in a FIFO and retries after each of its steps; if it is idle with
nothing running and still cannot take one, the request recomputes there instead (`requeue`).

Conditional disaggregation: with `skip_prefill_cached_fraction`, a request whose prompt is at
least that much in the chosen decode replica's prefix cache (a later turn of a conversation
that decoded there) skips the prefill pool and is prefilled on the decode replica itself.

Simplification: the prefill replica frees the request's blocks when the transfer starts,
where a real one holds them until the decode side has pulled them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from shunter.core.types import RequestId, RequestSpec
from shunter.metrics.record import RequestRecord
from shunter.router.interface import Router
from shunter.sim.handoff import MovedRequest
from shunter.sim.ops import ClusterOps
from shunter.sim.replica import SimReplica
from shunter.sim.staleness import ViewSource

__all__ = ["KV_TRANSFER_TIMER", "Disaggregation"]

KV_TRANSFER_TIMER = "kv_transfer"


class Disaggregation:
    def __init__(self, ops: ClusterOps, replicas: Sequence[SimReplica], router: Router,
                 decode_router: Router, prefill_views: ViewSource, decode_views: ViewSource,
                 *, kv_link_bytes_s: float, skip_prefill_cached_fraction: float | None = None,
                 ) -> None:
        self.ops = ops
        self.replicas = list(replicas)  # all of them, indexed by replica id
        self.router = router
        self.decode_router = decode_router
        self.prefill_views = prefill_views
        self.decode_views = decode_views
        self.kv_link_bytes_s = kv_link_bytes_s
        self.skip_prefill_cached_fraction = skip_prefill_cached_fraction
        self._targets: dict[RequestId, int] = {}  # request -> its decode replica
        self._transfers: dict[int, tuple[MovedRequest, int]] = {}
        self._next_key = 0
        self._backlog: dict[int, deque[MovedRequest]] = {}  # decode replica -> KV that waits
        self.num_handoffs = 0
        self.num_prefilled_on_decode = 0
        self.transfer_s: list[float] = []

    @property
    def has_pending(self) -> bool:
        return bool(self._transfers) or any(self._backlog.values())

    def route(self, spec: RequestSpec) -> int:
        """The replica that prefills `spec` (a prefill replica, or its decode replica when
        most of the prompt is cached there)."""
        decode_id = self.decode_router.route(spec, self.decode_views.views()).replica_id  # type: ignore[arg-type]
        self.decode_views.dispatched(decode_id, spec)
        threshold = self.skip_prefill_cached_fraction
        if threshold is not None:
            cached = self.replicas[decode_id].cached_prompt_tokens(spec)
            if cached >= threshold * spec.num_prompt_tokens:
                self.num_prefilled_on_decode += 1
                return decode_id
        prefill_id = self.router.route(spec, self.prefill_views.views()).replica_id  # type: ignore[arg-type]
        self.prefill_views.dispatched(prefill_id, spec)
        self._targets[spec.request_id] = decode_id
        return prefill_id

    def after_step(self, replica: SimReplica, finished: Sequence[RequestRecord]) -> None:
        """A step of `replica` ended (applied, nothing started yet): hand prefilled requests
        off, or let a decode replica take the KV that waits for it."""
        for record in finished:
            self._targets.pop(record.request_id, None)
        if replica.role == "prefill":
            for rid in replica.prefilled_ids():
                self._hand_off(replica, rid)
            return
        self._drain(replica)

    def forget(self, request_id: RequestId) -> None:
        """The request was rejected where it was sent."""
        self._targets.pop(request_id, None)

    def _hand_off(self, replica: SimReplica, request_id: RequestId) -> None:
        moved = replica.detach(request_id)
        decode_id = self._targets.pop(request_id)
        cost = replica.executor.cost_model
        transfer_s = cost.kv_transfer_time_s(moved.request.num_computed_tokens, self.kv_link_bytes_s)
        key = self._next_key
        self._next_key += 1
        self._transfers[key] = (moved, decode_id)
        self.num_handoffs += 1
        self.transfer_s.append(transfer_s)
        self.ops.set_timer(self.ops.clock.now() + transfer_s, KV_TRANSFER_TIMER, key)

    def on_timer(self, key: int) -> None:
        """A KV transfer ended: the request joins its decode replica at its next boundary."""
        moved, decode_id = self._transfers.pop(key)
        replica = self.replicas[decode_id]
        self.ops.at_boundary(replica, lambda: self._arrive(replica, moved))

    def _arrive(self, replica: SimReplica, moved: MovedRequest) -> None:
        self._backlog.setdefault(replica.replica_id, deque()).append(moved)
        self._drain(replica)

    def _drain(self, replica: SimReplica) -> None:
        """Attach waiting KV in arrival order while it fits."""
        backlog = self._backlog.get(replica.replica_id)
        while backlog:
            if replica.attach(backlog[0]):
                backlog.popleft()
            elif not replica.scheduler.has_work:
                replica.requeue(backlog.popleft())  # nothing here will free memory: recompute
            else:
                break
