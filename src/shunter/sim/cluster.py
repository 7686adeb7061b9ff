"""A simulated cluster: a router in front of replicas, driven by one event loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace

from shunter.core.clock import ManualClock
from shunter.core.types import RequestId, RequestSpec
from shunter.errors import WorkloadError
from shunter.metrics.record import RequestRecord
from shunter.router.interface import ReplicaView, Router
from shunter.sim.loop import ARRIVAL_PRIORITY, STEP_DONE_PRIORITY, Arrival, EventLoop, StepDone
from shunter.sim.replica import SimReplica, StepLog
from shunter.workload.program import FollowUp

__all__ = ["TRIM_EVERY_RECORDS", "RecordFn", "SimCluster"]

ProgressFn = Callable[[int], None]
RecordFn = Callable[[RequestRecord], None]
# A streamed run forgets step times no live request reads, once per this many finished records.
TRIM_EVERY_RECORDS = 4096


class _LazyViews(Sequence[ReplicaView]):
    """The replicas' snapshots at one instant, each taken only when a router first reads it.

    A router that looks at one replica (round robin, random) costs O(1) per request instead of
    O(replicas); one that scans them all sees exactly what a list would have held, since nothing
    changes between the arrival and its routing decision.
    """

    __slots__ = ("_replicas", "_views")

    def __init__(self, replicas: list[SimReplica]) -> None:
        self._replicas = replicas
        self._views: list[ReplicaView | None] = [None] * len(replicas)

    def __len__(self) -> int:
        return len(self._replicas)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._replicas)))]
        view = self._views[index]
        if view is None:
            view = self._views[index] = self._replicas[index].view()
        return view

    def __iter__(self) -> Iterator[ReplicaView]:
        return (self[i] for i in range(len(self._replicas)))


class SimCluster:
    def __init__(self, replicas: list[SimReplica], router: Router, clock: ManualClock,
                 *, record_steps: bool = False) -> None:
        if not replicas:
            raise ValueError("a cluster needs at least one replica")
        self.replicas = replicas
        self.router = router
        self.clock = clock
        self.loop = EventLoop(clock)
        self.step_log: list[StepLog] | None = [] if record_steps else None
        self.num_routed = [0] * len(replicas)

    def run(self, specs: Iterable[RequestSpec], *, on_progress: ProgressFn | None = None,
            progress_every: int = 1000, on_record: RecordFn | None = None,
            follow_ups: Mapping[RequestId, FollowUp] | None = None) -> list[RequestRecord]:
        """Simulate until every request has finished; returns one record per request, in
        finishing order. Arrivals are pulled lazily, so a streamed trace stays streamed.
        `follow_ups` maps a request id to a dependent request released `delay_s` after that
        request finishes (closed-loop agent programs, `shunter.workload.program`).

        With `on_record`, each finished record goes to it instead (the list returned is empty)
        and is forgotten: memory stays bounded by the requests in flight. A record's token
        times may be read only during that call (older step times are then trimmed)."""
        arrivals = iter(specs)
        finished: list[RequestRecord] = []
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
                self._start(replica)
            else:
                self._route(event.spec, finished)
                last_arrival_s = self._push_next(arrivals, last_arrival_s)
            if follow_ups:
                self._release(finished[num_before:], follow_ups)
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
        decision = self.router.route(spec, _LazyViews(self.replicas))  # type: ignore[arg-type]
        replica = self.replicas[decision.replica_id]
        self.num_routed[decision.replica_id] += 1
        rejected = replica.add(spec)
        if rejected is not None:
            finished.append(rejected)
            return
        cut_s = replica.cut_run()
        if cut_s is not None:
            self.loop.push(cut_s, STEP_DONE_PRIORITY, StepDone(replica.replica_id, replica.generation))
        self._start(replica)

    def _release(self, records: list[RequestRecord],
                 follow_ups: Mapping[RequestId, FollowUp]) -> None:
        """Queue the requests that were waiting for these to finish."""
        now = self.clock.now()
        for record in records:
            follow = follow_ups.get(record.request_id)
            if follow is not None:
                at_s = now + follow.delay_s
                self.loop.push(at_s, ARRIVAL_PRIORITY, Arrival(replace(follow.spec, arrival_s=at_s)))

    def _start(self, replica: SimReplica) -> None:
        end_s = replica.start_step()
        if end_s is not None:
            self.loop.push(end_s, STEP_DONE_PRIORITY, StepDone(replica.replica_id, replica.generation))
