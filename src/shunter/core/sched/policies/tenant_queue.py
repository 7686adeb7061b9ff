"""Waiting requests grouped by tenant: the structure the tenant-fair policies (VTC, DLPM) pick from.

Within a tenant, requests wait in (priority, arrival) order: a tenant's own priorities decide
which of its requests goes first, fairness decides which tenant. Removal is lazy, as in
`KeyedQueue`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from itertools import count

from shunter.core.request import Request
from shunter.core.types import RequestId, TenantId

__all__ = ["TenantQueues"]

_Entry = tuple[int, float, int, Request]  # (priority, arrival_s, seq, request)


class TenantQueues:
    __slots__ = ("_counts", "_heaps", "_live", "_seq")

    def __init__(self) -> None:
        self._heaps: dict[TenantId, list[_Entry]] = {}
        self._counts: dict[TenantId, int] = {}  # live requests per tenant; only tenants with some
        self._live: dict[RequestId, int] = {}  # request id -> seq of its live entry
        self._seq = count()

    def add(self, request: Request) -> bool:
        """Queue a request; True when its tenant had nothing waiting before (it just returned)."""
        seq = next(self._seq)
        self._live[request.request_id] = seq
        tenant = request.tenant
        heapq.heappush(self._heaps.setdefault(tenant, []),
                       (request.priority, request.arrival_s, seq, request))
        num = self._counts.get(tenant, 0)
        self._counts[tenant] = num + 1
        return num == 0

    def discard(self, request: Request) -> bool:
        """Take a queued request out; True when its tenant has nothing left waiting."""
        if self._live.pop(request.request_id, None) is None:
            return False
        tenant = request.tenant
        num = self._counts[tenant] - 1
        if num:
            self._counts[tenant] = num
            return False
        del self._counts[tenant]
        del self._heaps[tenant]
        return True

    @property
    def tenants(self) -> list[TenantId]:
        """Tenants with something waiting, in the order they first queued."""
        return list(self._counts)

    def head(self, tenant: TenantId) -> Request:
        """The tenant's next request (the tenant must have one waiting)."""
        heap, live = self._heaps[tenant], self._live
        while live.get(heap[0][3].request_id) != heap[0][2]:
            heapq.heappop(heap)
        return heap[0][3]

    def first(self, tenant: TenantId, num: int) -> list[Request]:
        """Up to `num` of the tenant's requests, in its order."""
        live = self._live
        entries = (e for e in self._heaps[tenant] if live.get(e[3].request_id) == e[2])
        return [e[3] for e in heapq.nsmallest(num, entries)]

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[Request]:
        live = self._live
        entries = sorted(e for heap in self._heaps.values() for e in heap
                         if live.get(e[3].request_id) == e[2])
        return iter([e[3] for e in entries])
