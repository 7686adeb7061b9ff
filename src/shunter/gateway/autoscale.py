"""Live autoscaling (`[autoscale]`): the simulator's `Autoscaler` decides, the gateway acts.

One backend is scaled (`AutoscaleSettings.backend`). Every `interval_s` the decision function
(`shunter.router.autoscale`, the same object `shunter simulate --autoscale` runs) sees that
backend's serving replicas as the router sees them (`Replica.view`: the gateway's in-flight
counts reconciled with the backends' reports; requests waiting in the gateway's admission
queue for a slot count as waiting at the replicas, dealt out over the pool) and how many are
still starting, and answers with replicas to add and replicas to drain:

- **up**: one more replica of the backend is built (an in-process engine loads its model, in a
  worker thread so that the event loop keeps serving: that is its cold start, which the
  simulator models as `provision_s`); it joins the router's set when
  built (**ready**), or the attempt is logged and dropped (**failed**: the next decision may
  try again);
- **down**: a replica is marked draining: the router no longer offers it, the requests it
  holds run to their end, then it is taken out of the pool and closed (**removed**).
  Draining by live migration (`drain = "migrate"`) is the simulator's; the gateway refuses
  it at start-up (`config.py`), as in-process engines cannot hand a running request over.

Every event is counted in /metrics (`shunter_autoscale_events_total{event}`), the replicas by
state in `shunter_autoscale_replicas{state}`, and kept in `events` (tests read the decisions
from there to compare them with the simulator's on the same trace).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace

from shunter.core.request import Request
from shunter.gateway.metrics import Counter, GatewayMetrics, Gauge
from shunter.gateway.pool import ReplicaPool
from shunter.gateway.replica import Replica
from shunter.router.autoscale import Autoscaler
from shunter.router.interface import ReplicaView

__all__ = ["LiveAutoscaler", "ReplicaMaker", "ScaleEvent"]

log = logging.getLogger("shunter.gateway")

# (the scaled backend's replica number, the pool's replica id) -> a built replica (`serve`'s
# loads a model in a worker thread; a test's may sleep its provisioning time, virtually)
ReplicaMaker = Callable[[int, int], Awaitable[Replica]]
EVENTS = ("up", "ready", "failed", "down", "removed")


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    time_s: float
    event: str  # one of EVENTS
    replica: str  # its name ("" for a replica that failed before it had one)


@dataclass(slots=True)
class LiveAutoscaler:
    pool: ReplicaPool
    autoscaler: Autoscaler
    make_replica: ReplicaMaker
    backend: str  # the scaled backend's name
    metrics: GatewayMetrics
    clock: Callable[[], float]
    # the gateway's admission queue: requests waiting for a slot on any backend, which the
    # decision counts as waiting at the replicas (as the simulator, where they wait there)
    queue: Iterable[Request] = ()
    events: list[ScaleEvent] = field(default_factory=list)
    counts: Counter = field(default_factory=lambda: Counter(
        "shunter_autoscale_events_total", "Autoscaling events: up (a replica asked for), ready "
        "(it serves), failed (it could not start), down (draining), removed.", ("event",)))
    _scaled: set[int] = field(default_factory=set)  # the replica ids of the scaled backend
    _starting: set[asyncio.Task[None]] = field(default_factory=set)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)
    _next_index: int = 0  # the next new replica's number within the backend
    _next_id: int = 0  # the next new replica's id in the pool
    _task: asyncio.Task[None] | None = None
    _is_stopped: bool = False

    def __post_init__(self) -> None:
        mine = [r for r in self.pool.replicas if _is_of(r.name, self.backend)]
        assert mine, f"backend {self.backend} has no replica in the pool"
        self._scaled = {r.replica_id for r in mine}
        self._next_index = len(mine)
        self._next_id = max(r.replica_id for r in self.pool.replicas) + 1
        self.metrics.extra.append(self.counts.render)
        self.metrics.gauges.append(Gauge(
            "shunter_autoscale_replicas", "Replicas of the autoscaled backend, by state.",
            ("state",), lambda: [((state,), float(n)) for state, n in self.num_by_state().items()]))

    def num_by_state(self) -> dict[str, int]:
        mine = self.scaled()
        draining = sum(r.is_draining for r in mine)
        return {"serving": len(mine) - draining, "starting": len(self._starting),
                "draining": draining}

    def scaled(self) -> list[Replica]:
        return [r for r in self.pool.replicas if r.replica_id in self._scaled]

    def start(self) -> None:
        """Decide at every multiple of `interval_s` on the clock (needs a running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop deciding; a replica still starting is waited for (a thread loading a model
        cannot be interrupted) and closed, as are those being removed."""
        self._is_stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in [*self._starting, *self._closing]:
            await task

    async def _loop(self) -> None:
        interval_s = self.autoscaler.config.interval_s
        index = math.floor(self.clock() / interval_s)
        while True:  # at the clock's multiples of interval_s, as the simulator decides
            index = max(index + 1, math.floor(self.clock() / interval_s))  # none run twice
            await asyncio.sleep(max(0.0, index * interval_s - self.clock()))
            try:
                self.tick()
            except Exception:  # a bug here must not stop the gateway: say it and go on
                log.exception("autoscaler decision failed")

    def tick(self) -> None:
        """One decision, now: drained replicas go, then what the autoscaler asks is done."""
        now = self.clock()
        for replica in self.scaled():
            if replica.is_draining and replica.num_in_flight == 0:
                self._remove(replica, now)
        serving = [r for r in self.scaled() if not r.is_draining]
        decision = self.autoscaler.decide(now, self.views(now, serving), len(self._starting))
        for _ in range(decision.num_add):
            self._add(now)
        by_id = {r.replica_id: r for r in serving}
        for replica_id in decision.drain_ids:
            replica = by_id[replica_id]
            replica.is_draining = True
            self._event(now, "down", replica.name)
            if replica.num_in_flight == 0:
                self._remove(replica, now)
        self.pool.on_capacity()

    def views(self, now: float, serving: list[Replica]) -> list[ReplicaView]:
        """The serving replicas' views, with the gateway's queued requests dealt out in queue
        order over every replica of the pool that takes requests (they wait for a slot on any
        of them): those dealt to one of `serving` wait there, prompt tokens and all."""
        views = [r.view(now) for r in serving]
        queued = [request.num_prompt_tokens for request in self.queue]
        takers = sorted(r.replica_id for r in self.pool.replicas if not r.is_draining)
        place = {replica_id: i for i, replica_id in enumerate(takers)}

        def with_queued(view: ReplicaView) -> ReplicaView:
            i = place.get(view.replica_id)
            mine = [] if i is None else queued[i::len(takers)]  # its deal: one in len(takers)
            if not mine:
                return view
            return replace(view, num_waiting=view.num_waiting + len(mine),
                           num_waiting_tokens=view.num_waiting_tokens + sum(mine))
        return [with_queued(v) for v in views]

    def _add(self, now: float) -> None:
        index, replica_id = self._next_index, self._next_id
        self._next_index += 1
        self._next_id += 1
        self._event(now, "up", f"{self.backend}-{index}")
        task = asyncio.get_running_loop().create_task(self._build(index, replica_id))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _build(self, index: int, replica_id: int) -> None:
        try:
            replica = await self.make_replica(index, replica_id)
        except Exception as exc:  # noqa: BLE001 - any failure to build is this replica's
            log.warning("autoscaler: replica %s-%d failed to start: %s", self.backend, index, exc)
            self._event(self.clock(), "failed", f"{self.backend}-{index}")
            return
        if self._is_stopped:
            await replica.client.close()
            return
        self._scaled.add(replica.replica_id)
        self.pool.replicas.append(replica)
        self._event(self.clock(), "ready", replica.name)
        self.pool.on_capacity()

    def _remove(self, replica: Replica, now: float) -> None:
        self.pool.replicas.remove(replica)
        self._scaled.discard(replica.replica_id)
        self._event(now, "removed", replica.name)
        task = asyncio.get_running_loop().create_task(replica.client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _event(self, now: float, event: str, name: str) -> None:
        self.events.append(ScaleEvent(now, event, name))
        self.counts.inc((event,))
        log.info("autoscaler: %s %s", event, name)


def _is_of(name: str, backend: str) -> bool:
    """Whether a replica named `name` is one of `backend`'s (named as `build_backends` names
    them: the backend's name, or NAME-i when it has several)."""
    index = name.removeprefix(f"{backend}-")
    return name == backend or (index != name and index.isdigit())
