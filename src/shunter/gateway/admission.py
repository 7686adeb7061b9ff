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
leaves with a 429. The dispatch rate is measured over the last `_RATE_RELEASES` slot releases
per second of busy time, and is only believed after `_MIN_EVIDENCE` releases: a gateway that
has not yet seen its backends finish anything refuses nobody for being slow. When no backend
can serve at all (every one down or ejected), a request is answered 503 at once, and those
waiting leave with a 503, rather than waiting out their queue time. A tenant's
`max_concurrent_requests` caps what it has admitted (queued or running) at once, and its token
limit reserves `max_tokens` (or, without one, its estimate of the tenant's output) at
admission, settled with the real count at the end: concurrent requests cannot overshoot it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from shunter.core.request import Request
from shunter.core.sched.gateway_queue import GatewayQueue
from shunter.gateway.errors import RateLimitError, ServiceUnavailableError
from shunter.gateway.metrics import GatewayMetrics
from shunter.gateway.tenant import TenantTable

__all__ = ["AdmissionConfig", "AdmissionController", "Ticket"]

_RATE_RELEASES = 64  # dispatch rate: over the last this many slot releases
_MIN_EVIDENCE = 8  # releases seen before the rate is believed
_UNKNOWN_RETRY_S = 1.0  # Retry-After when there is no evidence of how long a wait is


@dataclass(slots=True)
class DispatchRate:
    """Slot releases per second of busy time, over the last `_RATE_RELEASES` releases. Time
    the gateway spends idle (nothing running, nothing queued) is not counted, so the estimate
    neither starts at zero nor decays to zero over an idle night, while a busy gateway whose
    backends stop finishing sees it fall. Unknown (None) before `_MIN_EVIDENCE` releases."""

    releases: deque[float] = field(default_factory=lambda: deque(maxlen=_RATE_RELEASES))
    busy_s: float = 0.0  # busy seconds before `busy_since_s`
    busy_since_s: float | None = None

    def busy_clock(self, now_s: float) -> float:
        return self.busy_s + (0.0 if self.busy_since_s is None else now_s - self.busy_since_s)

    def on_busy(self, now_s: float) -> None:
        if self.busy_since_s is None:
            self.busy_since_s = now_s

    def on_idle(self, now_s: float) -> None:
        self.busy_s = self.busy_clock(now_s)
        self.busy_since_s = None

    def on_release(self, now_s: float) -> None:
        self.releases.append(self.busy_clock(now_s))

    def per_s(self, now_s: float) -> float | None:
        releases = self.releases
        if len(releases) < _MIN_EVIDENCE:
            return None
        span = self.busy_clock(now_s) - releases[0]
        return (len(releases) - 1) / span if span > 0 else None


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
    num_tokens_charged: float  # taken from the tenant's token bucket so far (a reservation)
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
    # None while some backend can serve (now or after a probe); else seconds until one may
    unavailable_s: Callable[[], float | None] = lambda: None
    num_active: int = 0
    dispatch_rate: DispatchRate = field(default_factory=DispatchRate)
    _waiters: dict[str, _Waiter] = field(default_factory=dict)  # request id -> waiter
    _per_tenant: dict[str, int] = field(default_factory=dict)  # admitted, not yet released
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
        down_s = self.unavailable_s()
        if down_s is not None:
            self._reject(tenant, "no_backend")
            raise ServiceUnavailableError("no backend can serve requests now (every one is down "
                                          "or ejected)", retry_after_s=down_s, code="no_backend")
        cap = self.tenants.max_concurrent(tenant)
        if cap is not None and self._per_tenant.get(tenant, 0) >= cap:
            self._reject(tenant, "concurrency_limit")
            raise RateLimitError(f"tenant {tenant!r} has {cap} requests in progress, its limit",
                                 retry_after_s=_UNKNOWN_RETRY_S,
                                 code="concurrency_limit_exceeded")
        output = request.max_output_tokens
        if output is None:
            output = self.tenants.output_estimate(tenant)
        num_tokens = request.num_prompt_tokens + output
        wait = self.tenants.rate_limit_wait_s(tenant, num_tokens, now)
        if wait > 0:
            self._reject(tenant, "rate_limit")
            raise RateLimitError(f"tenant {tenant!r} is over its rate limit", retry_after_s=wait,
                                 code="rate_limit_exceeded")
        ticket = Ticket(request, num_tokens)
        if not self.num_queued and self.num_active < self.capacity():
            self._charge(ticket, now)
            self.queue.add(request)
            assert self.queue.pop(now) is request
            self._start(ticket)
            return ticket
        self._enqueue(ticket, now)  # refusals raise before any charge
        self._charge(ticket, now)
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
                                     retry_after_s=self._expected_wait_s(self.clock()),
                                     code="queue_timeout") from None
        except (RateLimitError, ServiceUnavailableError):  # shed, or every backend went down
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
        self._uncount(ticket.tenant)
        self.queue.finish(ticket.request, num_prompt_tokens, output, now)
        prompt = ticket.request.num_prompt_tokens if num_prompt_tokens is None else num_prompt_tokens
        self.tenants.charge(ticket.tenant, 0, prompt + output - ticket.num_tokens_charged, now)
        if ticket.request.max_output_tokens is None and num_completion_tokens is not None:
            self.tenants.observe_output(ticket.tenant, num_completion_tokens)
        self.dispatch_rate.on_release(now)
        self.dispatch_waiting()
        if not self.num_active and not self.num_queued:
            self.dispatch_rate.on_idle(now)

    def dispatch_waiting(self) -> None:
        """Hand free slots to waiting requests, in the policy's order; when no backend can
        serve any more, every waiting request leaves with a 503 at once."""
        if self._waiters:
            down_s = self.unavailable_s()
            if down_s is not None:
                for waiter in list(self._waiters.values()):
                    self._reject(waiter.ticket.tenant, "no_backend")
                    self._leave(waiter)
                    waiter.future.set_exception(ServiceUnavailableError(
                        "no backend can serve requests now (every one is down or ejected)",
                        retry_after_s=down_s, code="no_backend"))
                return
        while self.num_queued and self.num_active < self.capacity():
            request = self.queue.pop(self.clock())
            waiter = self._waiters.pop(request.request_id)
            self._start(waiter.ticket)
            waiter.future.set_result(None)

    def _start(self, ticket: Ticket) -> None:
        self.num_active += 1
        ticket.is_dispatched = True
        self.dispatch_rate.on_busy(self.clock())

    def _charge(self, ticket: Ticket, now: float) -> None:
        """The request is in: count it against its tenant's limits."""
        self.tenants.charge(ticket.tenant, 1, ticket.num_tokens_charged, now)
        self._per_tenant[ticket.tenant] = self._per_tenant.get(ticket.tenant, 0) + 1

    def _uncount(self, tenant: str) -> None:
        left = self._per_tenant[tenant] - 1
        if left:
            self._per_tenant[tenant] = left
        else:
            del self._per_tenant[tenant]

    def _expected_wait_s(self, now: float, num_ahead: int | None = None) -> float:
        """Seconds until a request behind `num_ahead` queued ones (default: all) gets a slot,
        from the measured dispatch rate; `_UNKNOWN_RETRY_S` without evidence."""
        rate = self.dispatch_rate.per_s(now)
        ahead = self.num_queued if num_ahead is None else num_ahead
        return _UNKNOWN_RETRY_S if rate is None else max(_UNKNOWN_RETRY_S, (ahead + 1) / rate)

    def _enqueue(self, ticket: Ticket, now: float) -> None:
        self.dispatch_rate.on_busy(now)
        rate = self.dispatch_rate.per_s(now)
        expected = (self.num_queued + 1) / rate if rate else 0.0
        if expected > self.config.max_queue_wait_s:
            self._reject(ticket.tenant, "overloaded")
            raise RateLimitError("the gateway cannot start this request in time; retry later",
                                 retry_after_s=expected, code="overloaded")
        if self.num_queued >= self.config.max_queued and not self._shed_for(ticket):
            self._reject(ticket.tenant, "queue_full")
            raise RateLimitError("the gateway's queue is full",
                                 retry_after_s=self._expected_wait_s(now), code="queue_full")
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
            "shed for a more urgent request: the gateway's queue is full",
            retry_after_s=self._expected_wait_s(self.clock()), code="shed"))
        return True

    def _refund(self, ticket: Ticket, now: float) -> None:
        """It leaves without having run: every charge is given back."""
        if ticket.is_released:
            return
        self.tenants.charge(ticket.tenant, -1, -ticket.num_tokens_charged, now)
        self._uncount(ticket.tenant)
        ticket.is_released = True

    def _reject(self, tenant: str, reason: str) -> None:
        self.metrics.rejected.inc((tenant, reason))
