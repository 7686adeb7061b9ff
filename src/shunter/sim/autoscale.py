"""Autoscaling in the simulator: the cluster grows and shrinks as `router.autoscale` decides.

Every `interval_s` of virtual time (from the first arrival on, while anything is still to
happen) the `Autoscaler` gets fresh views of the serving replicas and the number starting:

- a scale-up creates a replica with the next unused id (ids are never reused or renumbered,
  so a replica's id is its index in `SimCluster.replicas` for good); it costs from then on but
  joins the router's set only `provision_s` later (cold start: provisioning and model load);
- a drained replica leaves the router's set at once, so it gets no new request. With
  `drain = "migrate"` its running requests move to the freest serving replicas by live
  migration (`sim.migration`: the cluster's migrator when `[cluster] migration` is set, which
  also balances load onto new replicas; else one of default settings, used for draining
  only), one at a time, each as soon as it decodes and fits; with "wait" they finish in
  place. Requests still queued there run there. It is removed once empty: nothing queued,
  running or migrating, checked every `DRAIN_CHECK_S` (the migrator's interval with "migrate").

What it costs is replica-seconds: the integral of provisioned replicas (serving, starting and
draining) over the run, from 0 to when its last request finished.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from shunter.router.autoscale import AutoscaleConfig, Autoscaler
from shunter.sim.config import MigrationConfig
from shunter.sim.migration import MIGRATION_STAGE_TIMER, Migrator, virtual_freeness
from shunter.sim.ops import ClusterOps
from shunter.sim.replica import SimReplica

__all__ = ["AUTOSCALE_TIMER", "DRAIN_CHECK_S", "DRAIN_TIMER", "READY_TIMER", "Autoscaling",
           "ScaleEvent", "ScalingCluster", "SimAutoscaler", "next_tick_s"]

AUTOSCALE_TIMER = "autoscale"
READY_TIMER = "autoscale_ready"  # key: the replica that is ready
DRAIN_TIMER = "autoscale_drain"
DRAIN_CHECK_S = 0.1  # how often a draining replica is checked for empty (drain = "wait")


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """`kind` happened to replica `replica_id` at `time_s`: "up" (scale-up decided, the
    replica starts), "ready" (it serves), "down" (it drains), "removed" (it is gone)."""

    time_s: float
    kind: str
    replica_id: int


@dataclass(frozen=True, slots=True)
class Autoscaling:
    """What a cluster needs to autoscale: the decision's settings and a replica factory
    (`make_replica(replica_id)`: a fresh replica like the first ones)."""

    config: AutoscaleConfig
    make_replica: Callable[[int], SimReplica]


class ScalingCluster(ClusterOps, Protocol):
    """What the autoscaler asks of the cluster, besides boundaries and timers."""

    @property
    def replicas(self) -> list[SimReplica]: ...

    def add_replica(self, replica: SimReplica) -> None:
        """Take `replica` (its id the next index) into the cluster, not yet routable."""
        ...

    def set_routable(self, replicas: list[SimReplica]) -> None:
        """Route new requests to these replicas only, from now on."""
        ...

    def has_events(self) -> bool:
        """Whether anything is still to happen (an arrival, a step, a timer)."""
        ...


def next_tick_s(now_s: float, interval_s: float) -> float:
    """The first multiple of `interval_s` after `now_s`."""
    index = math.floor(now_s / interval_s) + 1
    while index * interval_s <= now_s:  # floor of a rounded quotient can fall one short
        index += 1
    return index * interval_s


class SimAutoscaler:
    def __init__(self, cluster: ScalingCluster, autoscaling: Autoscaling, *,
                 migrator: Migrator | None, kv_link_bytes_s: float) -> None:
        self.cluster = cluster
        self.config = autoscaling.config
        self.make_replica = autoscaling.make_replica
        self.autoscaler = Autoscaler(self.config)
        self.serving: list[SimReplica] = list(cluster.replicas)  # routable, in id order
        self.starting: dict[int, SimReplica] = {}
        self.draining: list[SimReplica] = []
        self.events: list[ScaleEvent] = []
        self.balancer = migrator  # the cluster's load-balancing migrator, if any
        self.timers: dict[str, Callable[[int], None]] = {
            AUTOSCALE_TIMER: self._on_tick, READY_TIMER: self._on_ready,
            DRAIN_TIMER: self._on_drain_check}
        self.drainer: Migrator | None = None
        if self.config.drain == "migrate":
            self.drainer = migrator or Migrator(cluster, [], MigrationConfig(),
                                                kv_link_bytes_s=kv_link_bytes_s)
            if migrator is None:
                self.timers[MIGRATION_STAGE_TIMER] = self.drainer.on_timer
        self._drain_check_s = (DRAIN_CHECK_S if self.drainer is None
                               else self.drainer.config.interval_s)
        self._counts: list[tuple[float, int]] = [(0.0, len(self.serving))]  # (from, provisioned)
        self._armed = {AUTOSCALE_TIMER: False, DRAIN_TIMER: False}

    def arm(self) -> None:
        """Decide at the next multiple of interval_s (the cluster calls this on arrivals)."""
        if not self._armed[AUTOSCALE_TIMER]:
            self._arm(AUTOSCALE_TIMER, self.config.interval_s)

    def replica_seconds(self, end_s: float) -> float:
        """Provisioned replicas integrated over [0, end_s]."""
        total = 0.0
        for (start_s, count), (next_s, _) in zip(self._counts, [*self._counts[1:], (end_s, 0)],
                                                 strict=True):
            total += count * max(0.0, min(next_s, end_s) - min(start_s, end_s))
        return total

    def stats(self, end_s: float) -> dict[str, float]:
        """Counters for `SimRun.topology_stats`; cost over [0, end_s]."""
        replica_s = self.replica_seconds(end_s)
        return {"scale_ups": sum(e.kind == "up" for e in self.events),
                "scale_downs": sum(e.kind == "down" for e in self.events),
                "replica_seconds": replica_s,
                "mean_replicas": replica_s / end_s if end_s > 0 else float(self._counts[0][1]),
                "max_replicas_provisioned": max(count for _, count in self._counts)}

    # ---- timers ---------------------------------------------------------------------------

    def _on_tick(self, index: int) -> None:
        now = self.cluster.clock.now()
        decision = self.autoscaler.decide(now, [r.view() for r in self.serving],
                                          len(self.starting))
        for _ in range(decision.num_add):
            self._start_replica(now)
        for replica_id in decision.drain_ids:
            self._drain(self.cluster.replicas[replica_id], now)
        self._armed[AUTOSCALE_TIMER] = False
        if self.cluster.has_events():  # else the run is over: nothing is left to scale for
            self.arm()

    def _on_ready(self, replica_id: int) -> None:
        replica = self.starting.pop(replica_id)
        self.serving.append(replica)  # ids only grow: the list stays in id order
        self.cluster.set_routable(list(self.serving))
        if self.balancer is not None:
            self.balancer.replicas.append(replica)
        self._event("ready", replica_id)

    def _on_drain_check(self, index: int) -> None:
        for replica in list(self.draining):
            if self._is_empty(replica):
                self.draining.remove(replica)
                self._event("removed", replica.replica_id, delta=-1)
            elif self.drainer is not None:
                self._move_one(replica, self.drainer)
        self._armed[DRAIN_TIMER] = False
        if self.draining:
            self._arm(DRAIN_TIMER, self._drain_check_s)

    # ---- actions --------------------------------------------------------------------------

    def _start_replica(self, now_s: float) -> None:
        replica = self.make_replica(len(self.cluster.replicas))
        first = self.cluster.replicas[0]
        replica.priority_headroom = first.priority_headroom  # the migrator's, if it set one
        self.cluster.add_replica(replica)
        self.starting[replica.replica_id] = replica
        self._event("up", replica.replica_id, delta=1)
        self.cluster.set_timer(now_s + self.config.provision_s, READY_TIMER, replica.replica_id)

    def _drain(self, replica: SimReplica, now_s: float) -> None:
        self.serving.remove(replica)
        self.cluster.set_routable(list(self.serving))
        if self.balancer is not None:
            self.balancer.replicas.remove(replica)
        self.draining.append(replica)
        self._event("down", replica.replica_id)
        if not self._armed[DRAIN_TIMER]:
            self._arm(DRAIN_TIMER, self._drain_check_s)

    def _move_one(self, src: SimReplica, drainer: Migrator) -> None:
        """Start migrating one of `src`'s running requests to the freest replica that takes it."""
        if not src.scheduler.running or drainer.is_migrating(src):
            return
        ranked = sorted(self.serving, key=lambda r: (-virtual_freeness(r), r.replica_id))
        for dst in ranked:
            if drainer.drain_one(src, dst):
                return

    def _is_empty(self, replica: SimReplica) -> bool:
        return not (replica.is_busy or replica.scheduler.has_work
                    or (self.drainer is not None and self.drainer.is_migrating(replica))
                    or (self.balancer is not None and self.balancer.is_migrating(replica)))

    def _event(self, kind: str, replica_id: int, *, delta: int = 0) -> None:
        now = self.cluster.clock.now()
        self.events.append(ScaleEvent(now, kind, replica_id))
        if delta:
            self._counts.append((now, self._counts[-1][1] + delta))

    def _arm(self, kind: str, interval_s: float) -> None:
        self._armed[kind] = True
        self.cluster.set_timer(next_tick_s(self.cluster.clock.now(), interval_s), kind, 0)
