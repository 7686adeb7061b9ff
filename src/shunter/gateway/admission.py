"""Admission control: rate limits, a bounded fair queue across tenants (VTC), shedding.

A request first passes its tenant's rate limits (429 + Retry-After when over). While the
backends have free slots and nobody waits, it is dispatched at once: the fast path costs a few
dict operations. When every slot is taken, requests wait in the gateway's queue, and a freed
slot goes to the backlogged tenant with the least weighted service so far: the Virtual Token
Counter of Sheng et al. (OSDI '24), counting w_in = 1 per prompt token and w_out = 2 per output
token divided by the tenant's weight; a newly backlogged tenant's counter is lifted to the
smallest backlogged one, so idling earns no credit. Within a tenant: priority, then arrival.

The queue is bounded. When it is full, the lowest-priority waiting request is shed (429) to make
room for a more urgent one; otherwise the newcomer is refused. A request whose expected wait
(queue ahead / measured dispatch rate) exceeds `max_queue_wait_s` is refused at once with a
Retry-After of that wait, and one still waiting after `max_queue_wait_s` leaves with a 429.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from shunter.gateway.errors import RateLimitError
from shunter.gateway.metrics import GatewayMetrics
from shunter.gateway.tenant import TenantTable

__all__ = ["AdmissionConfig", "AdmissionController", "Ticket"]

_RATE_HALF_LIFE_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionConfig:
    max_queued: int = 4096
    max_queue_wait_s: float = 60.0
    input_token_weight: float = 1.0
    output_token_weight: float = 2.0

    def __post_init__(self) -> None:
        if self.max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {self.max_queued}")
        if not self.max_queue_wait_s > 0:
            raise ValueError(f"max_queue_wait_s must be > 0, got {self.max_queue_wait_s}")


@dataclass(slots=True)
class Ticket:
    """An admitted request: holds one backend slot until released."""

    tenant: str
    priority: int
    num_prompt_tokens_estimate: int
    num_tokens_charged: float
    is_released: bool = False


@dataclass(slots=True)
class _Waiter:
    ticket: Ticket
    future: asyncio.Future[None]
    seq: int


def _got_slot(waiter: _Waiter) -> bool:
    future = waiter.future
    return future.done() and not future.cancelled() and future.exception() is None


@dataclass(slots=True)
class AdmissionController:
    config: AdmissionConfig
    tenants: TenantTable
    capacity: Callable[[], int]  # backend slots available in all (healthy replicas)
    metrics: GatewayMetrics
    clock: Callable[[], float]
    num_active: int = 0
    counters: dict[str, float] = field(default_factory=dict)  # VTC virtual counters
    queues: dict[str, list[tuple[int, int, _Waiter]]] = field(default_factory=dict)
    num_queued: int = 0
    dispatch_rate_per_s: float = 0.0  # EWMA of slot releases
    _last_release_s: float | None = None
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    async def admit(self, tenant: str, priority: int, num_prompt_tokens_estimate: int,
                    max_tokens: int | None) -> Ticket:
        """Wait for a slot; raises RateLimitError when over a limit, shed or not servable in time."""
        now = self.clock()
        num_tokens = num_prompt_tokens_estimate + (max_tokens or 0)
        wait = self.tenants.rate_limit_wait_s(tenant, num_tokens, now)
        if wait > 0:
            self._reject(tenant, "rate_limit")
            raise RateLimitError(f"tenant {tenant!r} is over its rate limit", retry_after_s=wait,
                                 code="rate_limit_exceeded")
        self.tenants.charge(tenant, 1, num_tokens, now)
        ticket = Ticket(tenant, priority, num_prompt_tokens_estimate, num_tokens)
        if self.num_queued == 0 and self.num_active < self.capacity():
            self._start(ticket)
            return ticket
        await self._wait(ticket, now)
        return ticket

    def release(self, ticket: Ticket, num_prompt_tokens: int | None,
                num_completion_tokens: int | None) -> None:
        """Free the ticket's slot, settle its token charges and hand the slot on."""
        if ticket.is_released:
            return
        ticket.is_released = True
        self.num_active -= 1
        now = self.clock()
        prompt = ticket.num_prompt_tokens_estimate if num_prompt_tokens is None else num_prompt_tokens
        output = num_completion_tokens or 0
        self.tenants.charge(ticket.tenant, 0, prompt + output - ticket.num_tokens_charged, now)
        service = (self.config.input_token_weight * (prompt - ticket.num_prompt_tokens_estimate)
                   + self.config.output_token_weight * output)
        self._add_service(ticket.tenant, service)
        self._observe_release(now)
        self.dispatch_waiting()

    def dispatch_waiting(self) -> None:
        """Hand free slots to waiting requests, the least-served backlogged tenant first."""
        while self.num_queued and self.num_active < self.capacity():
            tenant = min((t for t, q in self.queues.items() if q),
                         key=lambda t: (self.counters.get(t, 0.0), t))
            _, _, waiter = heapq.heappop(self.queues[tenant])
            self.num_queued -= 1
            if waiter.future.done():  # cancelled by its client or timed out: drop it
                continue
            self._start(waiter.ticket)
            waiter.future.set_result(None)

    def _start(self, ticket: Ticket) -> None:
        self.num_active += 1
        self._add_service(ticket.tenant,
                          self.config.input_token_weight * ticket.num_prompt_tokens_estimate)

    def _add_service(self, tenant: str, service: float) -> None:
        self.counters[tenant] = self.counters.get(tenant, 0.0) + service / self.tenants.weight(tenant)

    async def _wait(self, ticket: Ticket, now: float) -> None:
        expected = (self.num_queued + 1) / self.dispatch_rate_per_s \
            if self.dispatch_rate_per_s > 0 else 0.0
        if expected > self.config.max_queue_wait_s:
            self._reject(ticket.tenant, "overloaded")
            self._refund(ticket, now)
            raise RateLimitError("the gateway cannot start this request in time; retry later",
                                 retry_after_s=expected, code="overloaded")
        if self.num_queued >= self.config.max_queued and not self._shed_for(ticket):
            self._reject(ticket.tenant, "queue_full")
            self._refund(ticket, now)
            raise RateLimitError("the gateway's queue is full", retry_after_s=max(1.0, expected),
                                 code="queue_full")
        waiter = _Waiter(ticket, asyncio.get_running_loop().create_future(), next(self._seq))
        self._enqueue(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.config.max_queue_wait_s)
        except TimeoutError:
            if not _got_slot(waiter):
                self._give_up(waiter)
                self._reject(ticket.tenant, "queue_timeout")
                raise RateLimitError("waited too long in the gateway's queue",
                                     retry_after_s=self.config.max_queue_wait_s,
                                     code="queue_timeout") from None
        except RateLimitError:  # shed for a more urgent request
            self._refund(ticket, self.clock())
            raise
        except asyncio.CancelledError:  # the client went away while queued
            if _got_slot(waiter):
                self.release(ticket, None, 0)
            else:
                self._give_up(waiter)
            raise
        self.metrics.queue_s.observe(self.clock() - now, (ticket.tenant,))

    def _give_up(self, waiter: _Waiter) -> None:
        waiter.future.cancel()
        self._purge(waiter)
        self._refund(waiter.ticket, self.clock())

    def _enqueue(self, waiter: _Waiter) -> None:
        tenant = waiter.ticket.tenant
        queue = self.queues.setdefault(tenant, [])
        if not queue:  # newly backlogged: no credit for idle time (VTC counter lift)
            backlogged = [self.counters.get(t, 0.0) for t, q in self.queues.items() if q]
            if backlogged:
                self.counters[tenant] = max(self.counters.get(tenant, 0.0), min(backlogged))
        heapq.heappush(queue, (waiter.ticket.priority, waiter.seq, waiter))
        self.num_queued += 1

    def _shed_for(self, ticket: Ticket) -> bool:
        """Fail the least urgent, latest waiter if `ticket` is more urgent; whether one was shed."""
        live = [w for q in self.queues.values() for _, _, w in q if not w.future.done()]
        if not live:
            return False
        victim = max(live, key=lambda w: (w.ticket.priority, w.seq))
        if victim.ticket.priority <= ticket.priority:
            return False
        self._reject(victim.ticket.tenant, "shed")
        victim.future.set_exception(RateLimitError(
            "shed for a more urgent request: the gateway's queue is full", retry_after_s=1.0,
            code="shed"))
        self._purge(victim)
        return True

    def _purge(self, waiter: _Waiter) -> None:
        queue = self.queues[waiter.ticket.tenant]
        queue[:] = [entry for entry in queue if entry[2] is not waiter]
        heapq.heapify(queue)
        self.num_queued -= 1

    def _refund(self, ticket: Ticket, now: float) -> None:
        self.tenants.charge(ticket.tenant, -1, -ticket.num_tokens_charged, now)
        ticket.is_released = True

    def _reject(self, tenant: str, reason: str) -> None:
        self.metrics.rejected.inc((tenant, reason))

    def _observe_release(self, now: float) -> None:
        if self._last_release_s is not None:
            gap = max(now - self._last_release_s, 1e-6)
            alpha = min(1.0, gap / _RATE_HALF_LIFE_S)
            self.dispatch_rate_per_s += alpha * (1.0 / gap - self.dispatch_rate_per_s)
        self._last_release_s = now
