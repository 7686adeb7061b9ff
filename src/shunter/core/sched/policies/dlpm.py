"""Deficit Longest Prefix Match (Cao et al., "Locality-aware Fair Scheduling in LLM Serving",
arXiv 2501.14312): prefix locality inside a fairness bound.

Each tenant has a deficit counter. Admission looks only at tenants with something waiting and
a positive deficit, and among their requests takes the one with the longest cached prefix
(SGLang's LPM; ties: priority, then arrival), so requests that share a hot system prompt run
back to back while its KV is resident. Service is charged to the deficit, the prompt when the
request is admitted and outputs as they are generated, counting only tokens actually computed (`ServiceMeter(skip_cached=True)`): cache hits are free,
which is what lets DLPM keep locality without penalising the tenants that benefit from it.
When no waiting tenant has a positive deficit, a new round starts: every waiting tenant's
deficit grows by `quantum` x its weight, as many rounds as it takes for one to go positive,
capped at one quantum (nobody banks credit). A tenant can get ahead of another by at most
about a quantum plus one request's service per round: the deficit bounds the unfairness that
pure LPM would allow (LPM starves tenants whose prompts share nothing).

The cached-prefix length of a waiting request comes from the scheduler (`PrefixAwarePolicy`);
only the first `max_candidates` waiting requests of each tenant (in its order) are probed, as
SGLang bounds its LPM scan. Ranks are memoised until the queue changes or service is charged
(once per step). Under memory pressure the request of the tenant with the smallest deficit
(the most served) is preempted first; DLPM itself never preempts. No output lengths are used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
from shunter.core.sched.policy import PrefixProbe
from shunter.core.types import TenantId, check_number

__all__ = ["DlpmPolicy", "DlpmQueue"]


@dataclass(slots=True)
class DlpmPolicy:
    quantum: float = 8192.0  # service a tenant may receive per round (w_in / w_out tokens)
    max_candidates: int = 32  # waiting requests per tenant whose prefix hits are probed
    input_weight: float = DEFAULT_INPUT_WEIGHT
    output_weight: float = DEFAULT_OUTPUT_WEIGHT
    tenant_weights: dict[TenantId, float] | None = None
    name: str = "dlpm"
    has_static_order: bool = False  # the order follows deficits and the prefix cache
    requires_engine: ClassVar[str | None] = None  # at a gateway it probes the router's prefix index
    preemptive: ClassVar[bool] = False  # should_preempt always says no
    deficits: dict[TenantId, float] = field(default_factory=dict)
    meter: ServiceMeter = field(init=False)
    _queue: DlpmQueue | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        check_number("quantum", self.quantum, gt=0)
        check_number("max_candidates", self.max_candidates, ge=1)
        for tenant, weight in (self.tenant_weights or {}).items():
            check_number(f"tenant weight for {tenant!r}", weight, gt=0)
        self.meter = ServiceMeter(self.input_weight, self.output_weight, skip_cached=True)

    def deficit(self, tenant: TenantId) -> float:
        """Service the tenant may still receive this round."""
        return self.deficits.get(tenant, 0.0)

    def refill(self, tenants: list[TenantId]) -> None:
        """Start enough new rounds for one of `tenants` to have a positive deficit."""
        weights = self.tenant_weights or {}
        quanta = {t: self.quantum * weights.get(t, 1.0) for t in tenants}
        num_rounds = min(int(-self.deficit(t) // quanta[t]) + 1 for t in tenants)
        for t in tenants:
            self.deficits[t] = min(quanta[t], self.deficit(t) + num_rounds * quanta[t])

    def make_queue(self) -> DlpmQueue:
        """Without a prefix cache to probe, DLPM is deficit round robin over FCFS tenants."""
        return self.make_prefix_queue(lambda request: 0)

    def make_prefix_queue(self, probe: PrefixProbe) -> DlpmQueue:
        self._queue = DlpmQueue(self, probe)
        return self._queue

    def victim_key(self, request: Request, now_s: float) -> object:
        return (request.priority, -self.deficit(request.tenant), request.arrival_s)

    def should_preempt(self, waiting: Request, running: Request, now_s: float) -> bool:
        return False

    def steps_until_reorder(self, running: Sequence[Request]) -> int:
        """Decode steps over which DLPM decides as now (the simulator's decode runs), while each
        running request takes w_out a step from its tenant's deficit: until two neighbours in
        the running order (victim keys) meet, and, with something waiting, until the last
        waiting tenant in credit runs out of it (the next peek would start a new round). Which
        request heads the queue does not matter then: a run with requests waiting has every
        seat taken, and DLPM never preempts. Only with whole quanta and weights (deficits stay
        integers, so bulk and step-by-step charging agree to the bit); else 0."""
        weights = [self.quantum, self.input_weight, self.output_weight,
                   *(self.tenant_weights or {}).values()]
        if not all(float(w).is_integer() for w in weights):
            return 0
        rates = tenant_rates(running, self.output_weight)
        steps = steps_before_tenants_swap(running, lambda r: self.victim_key(r, 0.0),
                                          lambda tenant: -self.deficit(tenant), rates)
        queue = self._queue
        if queue is not None and len(queue):
            in_credit = [t for t in queue.tenants if self.deficit(t) > 0]
            if not in_credit:
                return 0  # the next decision starts a new round
            steps = min(steps, max(steps_before_meeting(-self.deficit(t), rates.get(t, 0.0),
                                                        0.0, 0.0) for t in in_credit))
        return steps

    def charge(self, request: Request, service: float) -> None:
        if service:
            self.deficits[request.tenant] = self.deficit(request.tenant) - service

    def on_scheduled(self, request: Request, num_tokens: int, now_s: float) -> None:
        self.charge(request, self.meter.charge(request, num_tokens))
        if self._queue is not None:
            self._queue.invalidate()  # a step ran: the prefix cache has changed

    def on_finished(self, request: Request, now_s: float) -> None:
        self.meter.forget(request)


class DlpmQueue:
    """Waiting requests per tenant; the head is the longest cached prefix among tenants in credit."""

    __slots__ = ("_best", "_policy", "_probe", "_queues")

    def __init__(self, policy: DlpmPolicy, probe: PrefixProbe) -> None:
        self._policy = policy
        self._probe = probe
        self._queues = TenantQueues()
        self._best: Request | None = None  # memoised head; None: recompute

    def invalidate(self) -> None:
        self._best = None

    @property
    def tenants(self) -> list[TenantId]:
        """Tenants with something waiting."""
        return self._queues.tenants

    def add(self, request: Request) -> None:
        self._queues.add(request)
        self._best = None

    def peek(self) -> Request | None:
        if self._best is None:
            self._best = self._choose()
        return self._best

    def _choose(self) -> Request | None:
        queues, policy = self._queues, self._policy
        tenants = queues.tenants
        if not tenants:
            return None
        eligible = [t for t in tenants if policy.deficit(t) > 0]
        if not eligible:
            policy.refill(tenants)
            eligible = [t for t in tenants if policy.deficit(t) > 0]
        probe, k = self._probe, policy.max_candidates
        candidates = (r for t in eligible for r in queues.first(t, k))
        return min(candidates, key=lambda r: (r.priority, -probe(r), r.arrival_s))

    def pop(self) -> Request:
        request = self.peek()
        assert request is not None, "pop from an empty queue"
        self.remove(request)
        self._policy.charge(request, self._policy.meter.charge_admitted(request))
        return request

    def remove(self, request: Request) -> None:
        self._queues.discard(request)
        self._best = None

    def __len__(self) -> int:
        return len(self._queues)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._queues)
