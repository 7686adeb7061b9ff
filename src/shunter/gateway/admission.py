"""Admission control: rate limits, the bounded gateway queue, shedding, Retry-After.

A request first passes its tenant's rate limits (429 + Retry-After when over). While the
backends have free slots and nobody waits, it is dispatched at once. When every slot is
taken, it waits in the gateway tier's queue (`shunter.core.sched.gateway_queue.GatewayQueue`):
which waiting request a freed slot goes to, and what each is charged, is the configured core
policy's decision (default `vtc`), the same policy object type the engines and the simulator
run. Nothing here orders or accounts service; what is the gateway's own is below.

The queue is bounded. When it is full, the lowest-priority waiting request (the latest among
equals) is shed (429) to make room for a more urgent one; otherwise the newcomer is refused. A
request whose expected wait (queue ahead / measured dispatch rate) exceeds `max_queue_wait_s` is
refused at once with a Retry-After of that wait, and one still waiting after `max_queue_wait_s`
leaves with a 429.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from shunter.core.request import Request
from shunter.core.sched.gateway_queue import GatewayQueue
from shunter.gateway.errors import RateLimitError
from shunter.gateway.metrics import GatewayMetrics
from shunter.gateway.tenant import TenantTable

__all__ = ["AdmissionConfig", "AdmissionController", "Ticket"]

_RATE_HALF_LIFE_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionConfig:
    max_queued: int = 4096
    max_queue_wait_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {self.max_queued}")
        if not self.max_queue_wait_s > 0:
            raise ValueError(f"max_queue_wait_s must be > 0, got {self.max_queue_wait_s}")


@dataclass(slots=True)
class Ticket:
    """An admitted request: holds one backend slot until released."""

    request: Request  # the gateway tier's state of the request, charged by the policy
    num_tokens_charged: float  # taken from the tenant's token bucket so far
    is_dispatched: bool = False
    is_released: bool = False
    waiter: _Waiter | None = None  # while it waits in the queue (or was shed from it)

    @property
    def tenant(self) -> str:
        return self.request.tenant

    @property
    def priority(self) -> int:
        return self.request.priority


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
    queue: GatewayQueue
    num_active: int = 0
    dispatch_rate_per_s: float = 0.0  # EWMA of slot releases
    _waiters: dict[str, _Waiter] = field(default_factory=dict)  # request id -> waiter
    _last_release_s: float | None = None
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def num_queued(self) -> int:
        return len(self.queue)

    def queued_per_tenant(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for waiter in self._waiters.values():
            counts[waiter.ticket.tenant] = counts.get(waiter.ticket.tenant, 0) + 1
        return counts

    async def admit(self, request: Request) -> Ticket:
        """`enter` then `wait`: a ticket holding a slot."""
        ticket = self.enter(request)
        await self.wait(ticket)
        return ticket

    def enter(self, request: Request) -> Ticket:
        """Pass the rate limits and take a slot, or a place in the queue; RateLimitError when
        over a limit, or the queue is full or too slow to serve it in time. `request` is new
        (arrival_s, estimated prompt tokens, max_output_tokens, tenant, ...)."""
        now = self.clock()
        tenant = request.tenant
        num_tokens = request.num_prompt_tokens + (request.max_output_tokens or 0)
        wait = self.tenants.rate_limit_wait_s(tenant, num_tokens, now)
        if wait > 0:
            self._reject(tenant, "rate_limit")
            raise RateLimitError(f"tenant {tenant!r} is over its rate limit", retry_after_s=wait,
                                 code="rate_limit_exceeded")
        self.tenants.charge(tenant, 1, num_tokens, now)
        ticket = Ticket(request, num_tokens)
        if not self.num_queued and self.num_active < self.capacity():
            self.queue.add(request)
            assert self.queue.pop(now) is request
            self._start(ticket)
            return ticket
        self._enqueue(ticket, now)
        return ticket

    async def wait(self, ticket: Ticket) -> None:
        """Until the ticket holds a slot; RateLimitError if it was shed or waited too long.
        A cancelled wait leaves the queue (or gives back the slot it had just been given)."""
        if ticket.is_dispatched:
            return
        waiter = ticket.waiter
        assert waiter is not None, "wait() on a ticket that never queued"
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
        self.metrics.queue_s.observe(self.clock() - ticket.request.arrival_s, (ticket.tenant,))

    def release(self, ticket: Ticket, num_prompt_tokens: int | None,
                num_completion_tokens: int | None) -> None:
        """Free the ticket's slot, settle its charges (policy and rate limits), hand the slot on."""
        if ticket.is_released:
            return
        if not ticket.is_dispatched:  # it never got a slot: it leaves the queue, refunded
            waiter = ticket.waiter
            if waiter is not None and not waiter.future.done():
                self._give_up(waiter)
            else:
                self._refund(ticket, self.clock())
            return
        ticket.is_released = True
        now = self.clock()
        output = num_completion_tokens or 0
        self.num_active -= 1
        self.queue.finish(ticket.request, num_prompt_tokens, output, now)
        prompt = ticket.request.num_prompt_tokens if num_prompt_tokens is None else num_prompt_tokens
        self.tenants.charge(ticket.tenant, 0, prompt + output - ticket.num_tokens_charged, now)
        self._observe_release(now)
        self.dispatch_waiting()

    def dispatch_waiting(self) -> None:
        """Hand free slots to waiting requests, in the policy's order."""
        while self.num_queued and self.num_active < self.capacity():
            request = self.queue.pop(self.clock())
            waiter = self._waiters.pop(request.request_id)
            self._start(waiter.ticket)
            waiter.future.set_result(None)

    def _start(self, ticket: Ticket) -> None:
        self.num_active += 1
        ticket.is_dispatched = True

    def _enqueue(self, ticket: Ticket, now: float) -> None:
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
        ticket.waiter = waiter
        self._waiters[ticket.request.request_id] = waiter
        self.queue.add(ticket.request)

    def _give_up(self, waiter: _Waiter) -> None:
        waiter.future.cancel()
        self._leave(waiter)
        self._refund(waiter.ticket, self.clock())

    def _leave(self, waiter: _Waiter) -> None:
        """Take a waiter out of the queue (it leaves without a slot)."""
        self._waiters.pop(waiter.ticket.request.request_id, None)
        self.queue.remove(waiter.ticket.request, self.clock())

    def _shed_for(self, ticket: Ticket) -> bool:
        """Fail the least urgent, latest waiter if `ticket` is more urgent; whether one was shed."""
        if not self._waiters:
            return False
        victim = max(self._waiters.values(), key=lambda w: (w.ticket.priority, w.seq))
        if victim.ticket.priority <= ticket.priority:
            return False
        self._reject(victim.ticket.tenant, "shed")
        self._leave(victim)
        victim.future.set_exception(RateLimitError(
            "shed for a more urgent request: the gateway's queue is full", retry_after_s=1.0,
            code="shed"))
        return True

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
