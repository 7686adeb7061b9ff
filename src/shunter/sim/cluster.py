"""A simulated cluster: a router in front of replicas, driven by one event loop.

Topologies plug in here: prefill/decode pools (`disagg.py`), live migration (`migration.py`),
stale router views (`staleness.py`) and autoscaling (`autoscale.py`: replicas join and leave
the router's set, ids stay indices into `replicas`); in front of the router, optionally, a
gateway tier (`gateway.py`) where requests wait until a replica has a free slot. They move
requests between replicas only at step boundaries (`at_boundary`: the target's run is cut
after its step in flight, exactly as an arrival cuts it) and wake up through `Timer` events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from shunter.core.clock import ManualClock
from shunter.core.predict.interface import (
    NO_COST,
    ArrivalPredictor,
    CostedPredictor,
    charges_server_time,
    prediction_cost,
)
from shunter.core.types import RequestId, RequestSpec
from shunter.errors import WorkloadError
from shunter.metrics.record import RequestRecord
from shunter.router.interface import Router, is_load_blind, min_key, reads_speeds
from shunter.sim.autoscale import Autoscaling, SimAutoscaler, next_tick_s
from shunter.sim.config import MigrationConfig
from shunter.sim.disagg import KV_TRANSFER_TIMER, Disaggregation
from shunter.sim.gateway import SimGateway
from shunter.sim.loop import (
    ARRIVAL_PRIORITY,
    STEP_DONE_PRIORITY,
    TIMER_PRIORITY,
    Arrival,
    EventLoop,
    StepDone,
    Timer,
)
from shunter.sim.migration import MIGRATION_STAGE_TIMER, MIGRATION_TICK_TIMER, Migrator
from shunter.sim.ranking import index_for
from shunter.sim.replica import SimReplica, StepLog
from shunter.sim.staleness import ViewSource
from shunter.workload.program import FollowUps, followers

__all__ = ["SNAPSHOT_TIMER", "TRIM_EVERY_RECORDS", "ClusterTopology", "RecordFn", "SimCluster"]

ProgressFn = Callable[[int], None]
RecordFn = Callable[[RequestRecord], None]
# A streamed run forgets step times no live request reads, once per this many finished records.
TRIM_EVERY_RECORDS = 4096
SNAPSHOT_TIMER = "snapshot"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterTopology:
    """How the replicas are arranged beyond "a router in front of identical replicas"."""

    decode_router: Router | None = None  # set: disaggregated (replica roles name the pools)
    skip_prefill_cached_fraction: float | None = None
    kv_link_bytes_s: float = 25e9
    snapshot_interval_s: float = 0.0  # router staleness; 0: fresh views
    counts_in_flight: bool = True
    migration: MigrationConfig | None = None
    gateway: SimGateway | None = None  # set: requests wait at a gateway tier first
    autoscale: Autoscaling | None = None  # set: replicas come and go (`sim.autoscale`)


class SimCluster:
    def __init__(self, replicas: list[SimReplica], router: Router, clock: ManualClock,
                 *, record_steps: bool = False, topology: ClusterTopology | None = None,
                 predictor: ArrivalPredictor | None = None) -> None:
        if not replicas:
            raise ValueError("a cluster needs at least one replica")
        assert [r.replica_id for r in replicas] == list(range(len(replicas))), "ids are indices"
        topo = topology or ClusterTopology()
        self.replicas = replicas
        self.router = router
        self.clock = clock
        self.loop = EventLoop(clock)
        self.step_log: list[StepLog] | None = [] if record_steps else None
        self.num_routed = [0] * len(replicas)
        self.predictor = predictor  # one prediction per request, as it arrives (sjf, ltr)
        # a predictor whose predictions cost time (checked once, not at every arrival)
        self._costed = (predictor.predictor if predictor is not None
                        and isinstance(predictor.predictor, CostedPredictor) else None)
        # requests whose prediction costs external time, until it is done: (prediction, server s)
        self._predicted: dict[RequestId, tuple[float | None, float]] = {}
        if (predictor is not None and charges_server_time(predictor.predictor)
                and (topo.gateway is not None or topo.decode_router is not None)):
            raise ValueError("a predictor whose cost is server time (cost_mode 'server') is "
                             "modelled on plain replicas only, not behind a gateway tier or "
                             "in disaggregated pools; use cost_mode 'external'")
        self.gateway = topo.gateway
        if self.gateway is not None and topo.decode_router is not None:
            raise ValueError("a gateway tier in front of disaggregated pools is not modelled")
        self._boundary_ops: list[list[Callable[[], None]]] = [[] for _ in replicas]
        self._snapshot_interval_s = topo.snapshot_interval_s
        self._armed: dict[str, bool] = {SNAPSHOT_TIMER: False, MIGRATION_TICK_TIMER: False}
        view_source = _view_factory(topo)
        self.disagg: Disaggregation | None = None
        self.views: list[ViewSource] = []
        pool = replicas
        if topo.decode_router is not None:
            prefill = [r for r in replicas if r.role == "prefill"]
            pool = [r for r in replicas if r.role == "decode"]
            self.views = [view_source(prefill, router), view_source(pool, topo.decode_router)]
            self.disagg = Disaggregation(
                self, replicas, router, topo.decode_router, *self.views,
                kv_link_bytes_s=topo.kv_link_bytes_s,
                skip_prefill_cached_fraction=topo.skip_prefill_cached_fraction)
        else:
            self.views = [view_source(replicas, router)]
        # a load-blind router reads ids only: it gets these views, never recomputed
        self._blind_views = ([r.view() for r in replicas]
                             if is_load_blind(router) else None)
        self._min_index = index_for(replicas, min_key(router), reads_speeds(router), is_fixed_fresh=(
            self._blind_views is None and topo.decode_router is None and topo.autoscale is None
            and topo.snapshot_interval_s == 0))
        self.migrator = (None if topo.migration is None else
                         Migrator(self, pool, topo.migration, kv_link_bytes_s=topo.kv_link_bytes_s))
        self._timers: dict[str, Callable[[int], None]] = {
            SNAPSHOT_TIMER: self._on_snapshot, MIGRATION_TICK_TIMER: self._on_migration_tick}
        if self.disagg is not None:
            self._timers[KV_TRANSFER_TIMER] = self.disagg.on_timer
        if self.migrator is not None:
            self._timers[MIGRATION_STAGE_TIMER] = self.migrator.on_timer
        self.autoscaler: SimAutoscaler | None = None
        if topo.autoscale is not None:
            self.autoscaler = SimAutoscaler(self, topo.autoscale, migrator=self.migrator,
                                            kv_link_bytes_s=topo.kv_link_bytes_s)
            self._timers |= self.autoscaler.timers

    def run(self, specs: Iterable[RequestSpec], *, on_progress: ProgressFn | None = None,
            progress_every: int = 1000, on_record: RecordFn | None = None,
            follow_ups: FollowUps | None = None) -> list[RequestRecord]:
        """Simulate until every request has finished; returns one record per request, in
        finishing order. Arrivals are pulled lazily, so a streamed trace stays streamed.
        `follow_ups` maps a request id to the dependent request(s) released `delay_s` after that
        request finishes, or after the last of its `num_dependencies` (a barrier) finishes
        (closed-loop agent programs, `shunter.workload.program`).

        With `on_record`, each finished record goes to it instead (the list returned is empty)
        and is forgotten: memory stays bounded by the requests in flight. A record's token
        times may be read only during that call (older step times are then trimmed)."""
        arrivals = iter(specs)
        finished: list[RequestRecord] = []
        num_waiting_on: dict[RequestId, int] = {}  # barrier follow-up -> dependencies left
        num_handed_off = 0
        next_trim = TRIM_EVERY_RECORDS
        last_arrival_s = self._push_next(arrivals, 0.0)
        next_report = progress_every
        loop = self.loop
        while len(loop):
            event = loop.pop()
            num_before = len(finished)
            if isinstance(event, StepDone):
                replica = self.replicas[event.replica_id]
                if event.generation != replica.generation:
                    continue  # a run cut short: its old end was replaced
                finished.extend(replica.finish_step(self.step_log))
                self._after_step(replica, finished[num_before:])
                if self.gateway is not None and len(finished) > num_before:
                    self._release_slots(finished, num_before)
            elif isinstance(event, Timer):
                self._timers[event.kind](event.key)
            else:
                self._arm_periodic()
                # a request whose prediction took external time arrives a second time
                is_predicted = bool(self._predicted) and event.spec.request_id in self._predicted
                self._route(event.spec, finished)
                if not is_predicted:
                    last_arrival_s = self._push_next(arrivals, last_arrival_s)
            if follow_ups:
                self._release(finished[num_before:], follow_ups, num_waiting_on)
            if on_record is not None and finished:
                num_handed_off += len(finished)
                for record in finished:
                    on_record(record)
                finished.clear()
                if num_handed_off >= next_trim:
                    for r in self.replicas:
                        r.trim_timeline()
                    next_trim = num_handed_off + TRIM_EVERY_RECORDS
            num_done = num_handed_off + len(finished)
            if on_progress is not None and num_done >= next_report:
                on_progress(num_done)
                next_report = num_done + progress_every
        if on_progress is not None:
            on_progress(num_handed_off + len(finished))
        return finished

    # ---- services to topologies (`sim.ops.ClusterOps`) --------------------------------------

    def at_boundary(self, replica: SimReplica, op: Callable[[], None]) -> None:
        if not replica.is_busy:
            op()
            self._start(replica)
            return
        self._boundary_ops[replica.replica_id].append(op)
        self._cut(replica)

    def set_timer(self, at_s: float, kind: str, key: int) -> None:
        self.loop.push(at_s, TIMER_PRIORITY, Timer(kind, key))

    # ---- services to the autoscaler (`sim.autoscale.ScalingCluster`) ------------------------

    def add_replica(self, replica: SimReplica) -> None:
        assert replica.replica_id == len(self.replicas), "ids are indices"
        self.replicas.append(replica)
        self.num_routed.append(0)
        self._boundary_ops.append([])

    def set_routable(self, replicas: list[SimReplica]) -> None:
        source = self.views[0]
        source.replicas = replicas
        if source.is_stale:
            source.refresh()
        if self._blind_views is not None:
            self._blind_views = [r.view() for r in replicas]

    def has_events(self) -> bool:
        return len(self.loop) > 0

    # ---- events ---------------------------------------------------------------------------

    def _push_next(self, arrivals: Iterator[RequestSpec], last_s: float) -> float:
        spec = next(arrivals, None)
        if spec is None:
            return last_s
        if spec.arrival_s < last_s:
            raise WorkloadError(f"request {spec.request_id} arrives at {spec.arrival_s} s, before "
                                f"the previous one ({last_s} s): workloads must be sorted by arrival",
                                field="arrival")
        self.loop.push(spec.arrival_s, ARRIVAL_PRIORITY, Arrival(spec))
        return spec.arrival_s

    def _route(self, spec: RequestSpec, finished: list[RequestRecord]) -> None:
        predicted, server_s = None, 0.0
        if self.predictor is not None:
            done = self._predicted.pop(spec.request_id, None)
            if done is None:
                predicted = self.predictor.predict(spec, spec.num_output_tokens)
                cost = NO_COST if self._costed is None else prediction_cost(self._costed,
                                                                           predicted)
                if cost.external_s:  # it arrives again, to be queued, once it is predicted
                    self._predicted[spec.request_id] = (predicted, cost.server_s)
                    self.loop.push(self.clock.now() + cost.external_s, ARRIVAL_PRIORITY,
                                   Arrival(spec))
                    return
                server_s = cost.server_s
            else:
                predicted, server_s = done
        if self.gateway is not None:
            self.gateway.add(spec, predicted)
            self._dispatch(finished)
            return
        if self.disagg is not None:
            replica_id = self.disagg.route(spec)
        else:
            source = self.views[0]
            if self._min_index is not None:
                replica_id = self._min_index.pick()
            else:
                views = self._blind_views if self._blind_views is not None else source.views()
                replica_id = self.router.route(spec, views).replica_id  # type: ignore[arg-type]
            source.dispatched(replica_id, spec)
        replica = self.replicas[replica_id]
        self.num_routed[replica_id] += 1
        rejected = replica.add(spec, predicted_output_tokens=predicted, server_s=server_s)
        if rejected is not None:
            finished.append(rejected)
            if self.disagg is not None:
                self.disagg.forget(spec.request_id)
            return
        self._cut(replica)
        self._start(replica)

    def _dispatch(self, finished: list[RequestRecord]) -> None:
        """Release waiting requests, in the gateway policy's order, through the router to
        replicas with a free slot, while there are both."""
        gateway = self.gateway
        assert gateway is not None
        source = self.views[0]
        now = self.clock.now()
        while len(gateway.queue):
            room = gateway.replicas_with_room()
            if not room:
                return
            spec, request = gateway.pop(now)
            views = self._blind_views if self._blind_views is not None else source.views()
            replica_id = room[0]  # one candidate: no routing decision (as the live pool)
            if len(room) > 1:
                replica_id = self.router.route(spec, [views[i] for i in room]).replica_id
            source.dispatched(replica_id, spec)
            gateway.dispatched(request, views[replica_id])
            replica = self.replicas[replica_id]
            self.num_routed[replica_id] += 1
            rejected = replica.add(spec, predicted_output_tokens=request.predicted_output_tokens,
                                   dispatched_s=now)
            if rejected is not None:
                finished.append(rejected)
                gateway.finish(rejected, now)
                continue
            self._cut(replica)
            self._start(replica)

    def _release_slots(self, finished: list[RequestRecord], start: int) -> None:
        """Requests finished: settle them at the gateway, then fill the freed slots."""
        gateway = self.gateway
        assert gateway is not None
        now = self.clock.now()
        for record in finished[start:]:
            gateway.finish(record, now)
        self._dispatch(finished)

    def _after_step(self, replica: SimReplica, finished: list[RequestRecord]) -> None:
        ops = self._boundary_ops[replica.replica_id]
        if ops:
            self._boundary_ops[replica.replica_id] = []
            for op in ops:
                op()
        if self.disagg is not None:
            self.disagg.after_step(replica, finished)
        self._start(replica)

    def _release(self, records: list[RequestRecord], follow_ups: FollowUps,
                 num_waiting_on: dict[RequestId, int]) -> None:
        """Queue the requests that were waiting for these to finish (a barrier's on its last)."""
        now = self.clock.now()
        for record in records:
            entry = follow_ups.get(record.request_id)
            if entry is None:
                continue
            for follow in followers(entry):
                if follow.num_dependencies > 1:
                    request_id = follow.spec.request_id
                    left = num_waiting_on.get(request_id, follow.num_dependencies) - 1
                    if left:
                        num_waiting_on[request_id] = left
                        continue
                    num_waiting_on.pop(request_id, None)
                at_s = now + follow.delay_s
                self.loop.push(at_s, ARRIVAL_PRIORITY, Arrival(replace(follow.spec, arrival_s=at_s)))

    def _cut(self, replica: SimReplica) -> None:
        cut_s = replica.cut_run()
        if cut_s is not None:
            self.loop.push(cut_s, STEP_DONE_PRIORITY, StepDone(replica.replica_id, replica.generation))

    def _start(self, replica: SimReplica) -> None:
        end_s = replica.start_step()
        if end_s is not None:
            self.loop.push(end_s, STEP_DONE_PRIORITY, StepDone(replica.replica_id, replica.generation))

    # ---- periodic timers: armed while the cluster has work, re-armed by the next arrival ----

    def _arm_periodic(self) -> None:
        if self._snapshot_interval_s > 0 and not self._armed[SNAPSHOT_TIMER]:
            self._arm(SNAPSHOT_TIMER, self._snapshot_interval_s)
        if self.migrator is not None and not self._armed[MIGRATION_TICK_TIMER]:
            self._arm(MIGRATION_TICK_TIMER, self.migrator.config.interval_s)
        if self.autoscaler is not None:
            self.autoscaler.arm()

    def _arm(self, kind: str, interval_s: float) -> None:
        """Wake `kind` at the first multiple of `interval_s` after now."""
        self._armed[kind] = True
        self.set_timer(next_tick_s(self.clock.now(), interval_s), kind, 0)

    def _is_active(self) -> bool:
        return (any(r.is_busy or r.scheduler.has_work for r in self.replicas)
                or (self.gateway is not None and len(self.gateway.queue) > 0)
                or (self.disagg is not None and self.disagg.has_pending)
                or (self.migrator is not None and self.migrator.is_active))

    def _on_snapshot(self, index: int) -> None:
        for source in self.views:
            source.refresh()
        self._rearm(SNAPSHOT_TIMER, self._snapshot_interval_s)

    def _on_migration_tick(self, index: int) -> None:
        assert self.migrator is not None
        self.migrator.tick()
        self._rearm(MIGRATION_TICK_TIMER, self.migrator.config.interval_s)

    def _rearm(self, kind: str, interval_s: float) -> None:
        self._armed[kind] = False
        if self._is_active():
            self._arm(kind, interval_s)


def _view_factory(topo: ClusterTopology) -> Callable[[list[SimReplica], Router], ViewSource]:
    def make(replicas: list[SimReplica], router: Router) -> ViewSource:
        return ViewSource(replicas, interval_s=topo.snapshot_interval_s,
                          counts_in_flight=topo.counts_in_flight,
                          with_speeds=reads_speeds(router))
    return make
