"""Virtual Token Counter (Sheng et al., "Fairness in Serving Large Language Models", OSDI'24).

Each tenant has a counter of the service it received, divided by its weight: w_in = 1 per
prompt token and w_out = 2 per output token, charged as the tokens are scheduled
(`ServiceMeter`, whole prompts including cache hits, charged on admission as the paper does,
outputs as they are generated). Admission picks the tenant with the
smallest counter among tenants with waiting requests (ties: the earlier head request), and that
tenant's next request in (priority, arrival) order.

Counter lift (the paper's Algorithm 1): when a tenant with nothing waiting gets a new request,
its counter is raised to the smallest counter of the tenants that have requests waiting, or,
if none do, to the counter the last tenant to leave the queue had when it left. A tenant
therefore cannot bank service while idle and then monopolise the engine. (The authors'
artifact lifts only when another tenant is waiting; the paper's rule is used here.) A
preempted request coming back is not a return from idle and lifts nothing. Lifts are applied
at the next scheduling decision, in the order the tenants returned, from the counters then:
nothing is charged between an arrival and that decision when stepping one by one, and a
simulator decode run cut short by the arrival has by then charged its steps, so both see the
same counters.

This bounds the service gap between backlogged tenants (the paper proves 2x of the largest
per-step service), where FCFS lets a heavy tenant take everything. VTC never preempts for
fairness: `should_preempt` is False, and under memory pressure the request of the most-served
tenant (then the latest arrival) is preempted first. Output lengths are never needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from shunter.core.request import Request
from shunter.core.sched.policies.service import (
    DEFAULT_INPUT_WEIGHT,
    DEFAULT_OUTPUT_WEIGHT,
    ServiceMeter,
    steps_before_meeting,
    steps_before_tenants_swap,
    tenant_rates,
)
from shunter.core.sched.policies.tenant_queue import TenantQueues
from shunter.core.sched.policy import ScheduledChunk
from shunter.core.types import RequestStatus, TenantId, check_number

__all__ = ["VtcPolicy", "VtcQueue"]


@dataclass(slots=True)
class VtcPolicy:
    input_weight: float = DEFAULT_INPUT_WEIGHT
    output_weight: float = DEFAULT_OUTPUT_WEIGHT
    tenant_weights: dict[TenantId, float] | None = None  # weighted VTC; missing tenants weigh 1
    name: str = "vtc"
    has_static_order: bool = False  # the order follows counters that grow as service is charged
    requires_engine: ClassVar[str | None] = None
    preemptive: ClassVar[bool] = False  # should_preempt always says no
    victim_key_reads_progress: ClassVar[bool] = False  # (priority, counter, arrival)
    counters: dict[TenantId, float] = field(default_factory=dict)
    meter: ServiceMeter = field(init=False)
    _queue: VtcQueue | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.meter = ServiceMeter(self.input_weight, self.output_weight, skip_cached=False)
        for tenant, weight in (self.tenant_weights or {}).items():
            check_number(f"tenant weight for {tenant!r}", weight, gt=0)

    def weight(self, tenant: TenantId) -> float:
        return (self.tenant_weights or {}).get(tenant, 1.0)

    def counter(self, tenant: TenantId) -> float:
        """Weighted service the tenant received (after lifts)."""
        return self.counters.get(tenant, 0.0)

    def make_queue(self) -> VtcQueue:
        self._queue = VtcQueue(self)
        return self._queue

    def steps_until_reorder(self, running: Sequence[Request]) -> int:
        """Decode steps before two counters that decide an order meet, while each running
        request adds w_out / weight to its tenant's counter a step: neighbours in the running
        order (the first swap of linearly moving keys is between neighbours), and the waiting
        head's tenant against every other waiting tenant. Only with whole weights (counters
        stay integers, so bulk and step-by-step charging agree to the bit); else 0."""
        if not (float(self.input_weight).is_integer() and float(self.output_weight).is_integer()
                and all(w == 1.0 for w in (self.tenant_weights or {}).values())):
            return 0
        rates = tenant_rates(running, self.output_weight)
        counter = self.counter
        steps = steps_before_tenants_swap(running, lambda r: self.victim_key(r, 0.0), counter,
                                          rates)
        queue = self._queue
        if queue is not None and len(queue):
            if queue.has_pending_lifts:
                return 0  # the next decision lifts returned tenants first
            head = queue.best_tenant()
            for tenant in queue.tenants:
                if tenant != head:
                    steps = min(steps, steps_before_meeting(
                        counter(head), rates.get(head, 0.0),
                        counter(tenant), rates.get(tenant, 0.0)))
        return steps

    def victim_key(self, request: Request, now_s: float) -> object:
        return (request.priority, self.counter(request.tenant), request.arrival_s)

    def victim_key_at(self, now_s: float) -> Callable[[Request], object]:
        """`victim_key` as one function of the request (sorts the running list each step)."""
        get = self.counters.get
        return lambda r: (r.priority, get(r.tenant, 0.0), r.arrival_s)

    def should_preempt(self, waiting: Request, running: Request, now_s: float) -> bool:
        return False

    def on_scheduled(self, request: Request, num_tokens: int, now_s: float) -> None:
        self.charge(request, self.meter.charge(request, num_tokens))

    def on_scheduled_step(self, scheduled: Iterable[tuple[ScheduledChunk, int]],
                          now_s: float) -> None:
        """`on_scheduled` of each chunk of a step in turn (the same arithmetic, inlined)."""
        self.meter.charge_tenants(scheduled, self.counters, self.tenant_weights or {})

    def charge(self, request: Request, service: float) -> None:
        if service:
            tenant = request.tenant
            self.counters[tenant] = self.counter(tenant) + service / self.weight(tenant)

    def on_finished(self, request: Request, now_s: float) -> None:
        self.meter.forget(request)


class VtcQueue:
    """Waiting requests per tenant; the head is the least-served waiting tenant's next request."""

    __slots__ = ("_last_left", "_policy", "_queues", "_returned")

    def __init__(self, policy: VtcPolicy) -> None:
        self._policy = policy
        self._queues = TenantQueues()
        self._last_left = 0.0  # counter of the last tenant to leave the queue, when it left
        self._returned: dict[TenantId, None] = {}  # returned from idle, not yet lifted (in order)

    def add(self, request: Request) -> None:
        is_return = request.status == RequestStatus.WAITING and request.num_preemptions == 0
        if self._queues.add(request) and is_return:
            self._returned[request.tenant] = None

    def _apply_lifts(self) -> None:
        """Lift each returned tenant to the least-served tenant waiting before it came back."""
        counters, returned = self._policy.counters, self._returned
        waiting = [t for t in self._queues.tenants if t not in returned]
        for tenant in returned:
            floor = min(counters.get(t, 0.0) for t in waiting) if waiting else self._last_left
            counters[tenant] = max(counters.get(tenant, 0.0), floor)
            waiting.append(tenant)
        returned.clear()

    @property
    def has_pending_lifts(self) -> bool:
        return bool(self._returned)

    @property
    def tenants(self) -> list[TenantId]:
        return self._queues.tenants

    def best_tenant(self) -> TenantId | None:
        """The tenant the next admission serves (pending lifts not applied)."""
        return self._best_tenant()

    def _best_tenant(self) -> TenantId | None:
        counter, queues = self._policy.counter, self._queues
        tenants = queues.tenants
        if not tenants:
            return None
        return min(tenants, key=lambda t: (counter(t), queues.head(t).arrival_s))

    def peek(self) -> Request | None:
        if self._returned:
            self._apply_lifts()
        tenant = self._best_tenant()
        return None if tenant is None else self._queues.head(tenant)

    def pop(self) -> Request:
        request = self.peek()
        assert request is not None, "pop from an empty queue"
        self._policy.charge(request, self._policy.meter.charge_admitted(request))
        self.remove(request)  # after the charge: the counter it leaves with counts its prompt
        return request

    def remove(self, request: Request) -> None:
        if self._queues.discard(request):
            self._last_left = self._policy.counter(request.tenant)
            self._returned.pop(request.tenant, None)

    def __len__(self) -> int:
        return len(self._queues)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._queues)

