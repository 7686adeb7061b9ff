"""The gateway tier in virtual time: what `shunter serve` does in front of its backends.

Requests arriving at the cluster wait here, ordered and charged by a core policy
(`shunter.core.sched.gateway_queue.GatewayQueue`, the object the live gateway's admission
runs), and are released through the router only to a replica holding fewer than
`max_inflight` of the gateway's requests (the live gateway's per-backend `max_concurrency`).
Below, the replica's own engine policy still orders what it was given. A request is charged
when it is dispatched and, when it finishes, with the tokens it really used.

The replica sees the request arrive when it is dispatched (as a live engine does); its record
keeps the gateway arrival, so TTFT and queueing delay include the wait here.
"""

from __future__ import annotations

from dataclasses import dataclass

from shunter.core.request import Request
from shunter.core.sched.gateway_queue import GatewayQueue
from shunter.core.sched.policy import Policy, PrefixAwarePolicy
from shunter.core.types import RequestId, RequestSpec
from shunter.metrics.record import RequestRecord
from shunter.router.interface import ReplicaView
from shunter.router.prefix_index import DispatchIndex

__all__ = ["SimGateway"]


@dataclass(slots=True)
class _Dispatched:
    request: Request
    replica_id: int


class SimGateway:
    """The gateway's queue and its per-replica in-flight counts."""

    __slots__ = ("_dispatched", "_specs", "index", "max_inflight", "num_in_flight", "queue")

    def __init__(self, policy: Policy, *, max_inflight: int, num_replicas: int) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.index = DispatchIndex() if isinstance(policy, PrefixAwarePolicy) else None
        self.queue = GatewayQueue(policy, None if self.index is None else self.index.probe)
        self.max_inflight = max_inflight
        self.num_in_flight = [0] * num_replicas
        self._specs: dict[RequestId, RequestSpec] = {}
        self._dispatched: dict[RequestId, _Dispatched] = {}

    def add(self, spec: RequestSpec, predicted_output_tokens: float | None) -> None:
        """A request arrived: it waits in the policy's order."""
        request = Request.from_spec(spec, hash_blocks=False)
        request.predicted_output_tokens = predicted_output_tokens
        self._specs[spec.request_id] = spec
        if self.index is not None:
            self.index.add(spec)
        self.queue.add(request)

    def replicas_with_room(self) -> list[int]:
        """Replicas holding fewer than `max_inflight` of the gateway's requests."""
        limit = self.max_inflight
        return [i for i, n in enumerate(self.num_in_flight) if n < limit]

    def pop(self, now_s: float) -> tuple[RequestSpec, Request]:
        """The policy's next request leaves the queue (charged as dispatched)."""
        request = self.queue.pop(now_s)
        return self._specs.pop(request.request_id), request

    def dispatched(self, request: Request, view: ReplicaView) -> None:
        """`request` went to `view`'s replica."""
        self._dispatched[request.request_id] = _Dispatched(request, view.replica_id)
        self.num_in_flight[view.replica_id] += 1
        if self.index is not None:
            self.index.dispatched(request.request_id, view)

    def finish(self, record: RequestRecord, now_s: float) -> bool:
        """A request ended somewhere: settle its charges and free its slot. False if it did
        not come through this gateway."""
        entry = self._dispatched.pop(record.request_id, None)
        if entry is None:
            return False
        self.num_in_flight[entry.replica_id] -= 1
        self.queue.finish(entry.request, record.num_prompt_tokens, len(record.token_times_s),
                          now_s)
        return True
