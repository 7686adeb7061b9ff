"""The scheduling-policy interface (the keyed waiting queue most policies share is in `queue`).

A policy decides *order*, never mechanism. It supplies:
- a waiting queue (usually `KeyedQueue` over a static ordering key: smaller runs first);
- a victim key over running requests (the largest is preempted first);
- `should_preempt(waiting, running)`: whether a waiting request may displace a running one
  (priority preemption); memory-pressure preemption needs no permission;
- charging hooks (`on_scheduled`, `on_finished`) for policies that keep service counters
  (VTC, DLPM, MLFQ). Hooks change the policy's own state, never the request.

Two optional fast paths, for the loops that run over every running request at every step (the
scheduler here and inside vLLM): `on_scheduled_step(scheduled, now_s)` charges a whole step's
chunks and must equal `on_scheduled` of each in turn, to the bit; `victim_key_at(now_s)` returns
a one-argument function equal to `victim_key(request, now_s)`. Runtimes reach them only through
`step_charger` and `victim_sort_key`, which fall back to the plain hooks. A policy whose
victim key reads nothing a request gains as it runs (only what it arrives with, and the policy's
own state) may say `victim_key_reads_progress = False` (a class attribute): a runtime that keeps
mirrors of another engine's requests (inside vLLM) then sorts without syncing them. Likewise
`on_scheduled_step` reads of each request only what `ScheduledChunk` names, so such a runtime
hands it the other engine's own requests, carrying their tenant (`chunk_charger`), and syncs no
mirror to charge a step.

A policy whose order depends on the prefix cache (DLPM) also implements `PrefixAwarePolicy`:
the scheduler then builds its queue with `make_prefix_queue(probe)`, where `probe(request)` is
the number of prompt tokens the cache would serve that request if it were admitted now.

Time-varying orders stay static where they can: continuous aging `priority - waited/aging_s`
orders requests exactly like the static key `priority * aging_s + arrival_s`.

Tiers. A policy orders an engine's waiting queue (the engine tier), and most can also order
the gateway's queue, where requests wait before any backend has them (the gateway tier,
`core.sched.gateway_queue`): there nothing runs yet, so nothing can be preempted, demoted
while running or batched under a token budget. A policy whose point is one of those says why
in `requires_engine`; the gateway tier refuses it with that reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from shunter.core.request import Request
from shunter.core.sched.queue import KeyedQueue
from shunter.core.types import RequestId, TenantId

__all__ = ["EarlyStoppingPolicy", "KeyedQueue", "Policy", "PrefixAwarePolicy", "PrefixProbe", "RecallingPolicy",
           "ReorderBoundPolicy", "ScheduledChunk", "StaticKeyPolicy", "WaitingQueue",
           "charges_service", "chunk_charger", "never_preempts", "static_victim_key",
           "victim_sort_key"]

PrefixProbe = Callable[[Request], int]  # cached prompt tokens a waiting request would hit now


class WaitingQueue(Protocol):
    """Requests not running, in the order a policy wants them admitted."""

    def add(self, request: Request) -> None:
        """Queue a request (new, preempted or swapped out)."""
        ...

    def peek(self) -> Request | None:
        """The next request to admit, without removing it."""
        ...

    def pop(self) -> Request:
        """Remove and return the next request to admit."""
        ...

    def remove(self, request: Request) -> None:
        """Take a queued request out (it was aborted)."""
        ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Request]: ...


class Policy(Protocol):
    """Ordering, victims and charging: everything a scheduling policy decides."""

    name: str
    # True when the waiting order and `should_preempt` never change while requests only decode
    # (no charging-dependent order): lets the simulator apply steady decode steps in bulk
    # (`CoreScheduler.steps_until_reorder`). A policy without one may bound its reorders with
    # the optional `ReorderBoundPolicy.steps_until_reorder`.
    has_static_order: bool
    # Why this policy cannot order the gateway's queue (it needs an engine: preemption,
    # demotion of running requests, a token budget); None if it can. See the module docstring.
    requires_engine: ClassVar[str | None]

    def make_queue(self) -> WaitingQueue:
        """A fresh waiting queue in this policy's order."""
        ...

    def victim_key(self, request: Request, now_s: float) -> object:
        """Sort key over running requests; the largest is preempted first."""
        ...

    def should_preempt(self, waiting: Request, running: Request, now_s: float) -> bool:
        """Whether `waiting` may take the place of `running` (priority preemption)."""
        ...

    def on_scheduled(self, request: Request, num_tokens: int, now_s: float) -> None:
        """Charge `num_tokens` of service scheduled for `request` this step. Reads only what
        the request arrived with and its `num_computed_tokens` (all that a runtime keeping
        mirrors of another engine's requests syncs before charging)."""
        ...

    def on_finished(self, request: Request, now_s: float) -> None:
        """The request left the scheduler (finished, aborted or rejected)."""
        ...


# Optional members a policy may define (read through the functions below, which supply the
# defaults):
# - `charges_on_schedule: ClassVar[bool]` (default True): False promises that `on_scheduled`
#   does nothing, so runtimes skip it (`charges_service`) and a step's charges cannot reorder
#   the policy between that step's decisions and its end (`CoreScheduler.steps_until_reorder`);
# - `preemptive: ClassVar[bool]` (default True): False promises that `should_preempt` always
#   says no (`never_preempts`);
# - `victim_key_at`, `on_scheduled_step`, `victim_key_reads_progress`: see the module docstring;
# - `steps_until_reorder`: `ReorderBoundPolicy`;
# - `recalls`: `RecallingPolicy`;
# - `probe_tokens`, `early_stops`: `EarlyStoppingPolicy`.


@runtime_checkable
class ReorderBoundPolicy(Protocol):
    """A policy without a static order that can say how long its decisions hold (optional)."""

    def steps_until_reorder(self, running: Sequence[Request]) -> int:
        """How many steps from an applied state, each giving every running request one decode
        token (charged through `on_scheduled`), this policy decides exactly as it does now (the
        waiting order, the order of the running requests' victim keys, `should_preempt`'s
        answers); 0 if it cannot say. Lets the simulator apply that many steps in bulk."""
        ...


@runtime_checkable
class RecallingPolicy(Protocol):
    """A policy that sends running requests back to the waiting queue by its own rule
    (optional; length-grouped scheduling's failed predictions). Engine tier only."""

    def recalls(self, running: Sequence[Request]) -> list[Request]:
        """Running requests to preempt before this step is planned, memory short or not
        (usually none); the scheduler preempts them as any victim and queues them again. A
        ReorderBoundPolicy's bound must end decode runs before the state where it recalls."""
        ...


@runtime_checkable
class EarlyStoppingPolicy(Protocol):
    """A policy that ends requests early from probes of their progress (optional; Dynasor's
    Certaindex). Engine tier only, and only where the executor reports probes: every
    `probe_tokens` generated tokens of a request, a certainty value in [0, 1]
    (`StepResult.probes`). A runtime whose executor cannot must refuse such a policy."""

    probe_tokens: int

    def early_stops(self, probes: Sequence[tuple[Request, float]], now_s: float
                    ) -> list[Request]:
        """Record the certainty values reported by a step (for live requests, in step order)
        and return the requests to end now, running or queued (usually none); the scheduler
        ends them as FINISHED_EARLY, after the step's tokens count."""
        ...


@runtime_checkable
class PrefixAwarePolicy(Protocol):
    """A policy whose waiting order depends on what the prefix cache holds (e.g. DLPM)."""

    def make_prefix_queue(self, probe: PrefixProbe) -> WaitingQueue:
        """A fresh waiting queue that may call `probe` to rank waiting requests."""
        ...


class StaticKeyPolicy:
    """The shared body of policies that order by one static key (fcfs, priority, sjf, ltr).

    A subclass defines `order_key(request)`: the waiting queue is a heap over it, the largest is
    preempted first under memory pressure, and with `preemptive` a waiting request displaces a
    running one with a larger key. No service is charged.
    """

    __slots__ = ()
    preemptive = False  # subclasses may make it a field
    charges_on_schedule = False  # on_scheduled charges nothing
    # a static order is an order at either tier (preemption, where a subclass has it, applies
    # in engines only)
    requires_engine: ClassVar[str | None] = None

    def order_key(self, request: Request) -> Any:
        """The static ordering key; smaller runs first."""
        raise NotImplementedError

    def make_queue(self) -> KeyedQueue:
        return KeyedQueue(self.order_key)

    def victim_key(self, request: Request, now_s: float) -> object:
        return self.order_key(request)

    def should_preempt(self, waiting: Request, running: Request, now_s: float) -> bool:
        return self.preemptive and self.order_key(waiting) < self.order_key(running)

    def on_scheduled(self, request: Request, num_tokens: int, now_s: float) -> None:
        pass

    def on_finished(self, request: Request, now_s: float) -> None:
        pass


def _keeps_static(policy: Policy, method: str) -> bool:
    """Whether `policy` is a StaticKeyPolicy that keeps StaticKeyPolicy's own `method`."""
    return (isinstance(policy, StaticKeyPolicy)
            and getattr(type(policy), method) is getattr(StaticKeyPolicy, method))


def never_preempts(policy: Policy) -> bool:
    """Whether `policy.should_preempt` always says no (a StaticKeyPolicy that is not
    `preemptive`, or another policy whose class says `preemptive = False`), so phase 0 need not
    look for a victim every step."""
    if isinstance(policy, StaticKeyPolicy):
        return _keeps_static(policy, "should_preempt") and not policy.preemptive
    return getattr(type(policy), "preemptive", True) is False


def charges_service(policy: Policy) -> bool:
    """Whether `policy.on_scheduled` may do anything (StaticKeyPolicy's does nothing, and a
    policy whose class says `charges_on_schedule = False`), so runtimes can skip calling it."""
    if isinstance(policy, StaticKeyPolicy):
        return not _keeps_static(policy, "on_scheduled")
    return getattr(type(policy), "charges_on_schedule", True) is not False


def static_victim_key(policy: Policy) -> Callable[[Request], Any] | None:
    """`victim_sort_key`'s answer at every time, where it does not depend on the time (a
    static order's key itself); None where it does. Runtimes cache it: they sort every step."""
    return policy.order_key if _keeps_static(policy, "victim_key") else None  # type: ignore[attr-defined]


def victim_sort_key(policy: Policy, now_s: float) -> Callable[[Request], Any]:
    """A key that sorts requests as `policy.victim_key(request, now_s)` does: a static order's
    key itself when the policy keeps StaticKeyPolicy's victim key, else the policy's own
    `victim_key_at(now_s)` where it has one (one call per request, not three: the scheduler
    sorts the running list every step)."""
    static = static_victim_key(policy)
    if static is not None:
        return static
    victim_key_at = getattr(policy, "victim_key_at", None)
    if victim_key_at is not None:
        return victim_key_at(now_s)  # type: ignore[no-any-return]
    return lambda request: policy.victim_key(request, now_s)


class ScheduledChunk(Protocol):
    """All that `on_scheduled_step` reads of a scheduled request (before the step's tokens
    count as computed)."""

    @property
    def request_id(self) -> RequestId: ...

    @property
    def tenant(self) -> TenantId: ...

    @property
    def num_prompt_tokens(self) -> int: ...

    @property
    def num_computed_tokens(self) -> int: ...


ChunkCharger = Callable[[Iterable[tuple[ScheduledChunk, int]], float], None]


def chunk_charger(policy: Policy) -> ChunkCharger | None:
    """The policy's `on_scheduled_step`, which takes any `ScheduledChunk`s, where it has one
    (else None: charge through `step_charger` with the core's requests)."""
    return getattr(policy, "on_scheduled_step", None)


def step_charger(policy: Policy) -> Callable[[Iterable[tuple[Request, int]], float], None]:
    """`charge(scheduled, now_s)`: `policy.on_scheduled` for each (request, num_tokens) of a
    step in turn, through the policy's `on_scheduled_step` where it has one."""
    on_scheduled_step = getattr(policy, "on_scheduled_step", None)
    if on_scheduled_step is not None:
        return on_scheduled_step  # type: ignore[no-any-return]
    on_scheduled = policy.on_scheduled

    def charge(scheduled: Iterable[tuple[Request, int]], now_s: float) -> None:
        for request, num_tokens in scheduled:
            on_scheduled(request, num_tokens, now_s)

    return charge
