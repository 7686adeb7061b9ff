"""One simulation split across processes, when its replicas never interact (exact).

A cluster's replicas interact only through: a router that reads their state, live migration,
prefill/decode handoffs, follow-up calls (released when another replica finishes a call), a
length predictor's cluster-wide session history and a gateway tier's shared queue. Without any of these, with a load-blind
router (`round_robin`, `random`: decisions depend on the request sequence only), replica i's
whole evolution depends only on the requests routed to it. So each of `workers` processes
replays the routing of the whole request sequence, keeps the requests of its own replicas
(`replica_id % workers == k`) and simulates just those; the union of their records is the
one-process run's, record for record (only the interleaving of finishing order between
replicas differs). Records come back pickled, or, streamed into a `RecordSpill`, as column
files appended to the caller's spill. Workers are forked (POSIX), so `make_specs` may be any
callable: each worker calls it to read the sequence afresh.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from shunter.core.types import RequestSpec
from shunter.metrics.record import RequestRecord
from shunter.router.interface import ReplicaView, RouteDecision, is_load_blind
from shunter.router.registry import make_router
from shunter.sim.config import SimConfig
from shunter.sim.replica import StepLog
from shunter.sim.runner import (
    SimRun,
    build_cluster,
    check_cluster_memory,
    simulate,
    topology_stats,
)
from shunter.sim.stream import ColumnSink, RecordSpill

__all__ = ["partition_blocker", "simulate_parallel"]


def partition_blocker(config: SimConfig, *, has_follow_ups: bool = False) -> str | None:
    """Why this run cannot be split across processes; None if it can."""
    if config.num_replicas_total < 2:
        return "a single replica"
    if "fork" not in multiprocessing.get_all_start_methods():
        return "this platform cannot fork worker processes"
    if config.disaggregation:
        return "prefill/decode disaggregation hands requests between replicas"
    if config.migration is not None:
        return "live migration moves requests between replicas"
    if config.autoscale is not None:
        return "autoscaling adds and drains replicas"
    if config.predictor is not None:
        return "the length predictor keeps cluster-wide session history"
    if config.has_gateway:
        return "the gateway tier's queue feeds every replica"
    if has_follow_ups:
        return "follow-up calls are released by whichever replica finishes a call"
    router = make_router(config.router, **config.router_params)
    if not is_load_blind(router):
        return f"router {config.router!r} reads replica state"
    return None


def simulate_parallel(config: SimConfig, make_specs: Callable[[], Iterable[RequestSpec]], *,
                      workers: int, on_record: RecordSpill | ColumnSink | None = None) -> SimRun:
    """`simulate(config, make_specs(), on_record=on_record)`, on `workers` processes when the
    replicas never interact (`partition_blocker`), else in this process. Same records; a
    streamed run (`on_record`) appends every worker's rows (a `RecordSpill`) or columns (a
    `ColumnSink`) to `on_record`."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    workers = min(workers, config.num_replicas_total)
    if workers == 1 or partition_blocker(config) is not None:
        return simulate(config, make_specs(), on_record=on_record)
    check_cluster_memory(config, copies=workers)  # each worker builds the whole cluster
    sink = on_record if isinstance(on_record, ColumnSink) else None
    with tempfile.TemporaryDirectory(prefix="shunter-part-") as tmp:
        spill_dirs = ([Path(tmp) / f"part{k}" for k in range(workers)]
                      if isinstance(on_record, RecordSpill) else None)
        ctx = multiprocessing.get_context("fork")
        pipes: list[Connection] = []
        procs = []
        for k in range(1, workers):
            parent_end, child_end = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(child_end, config, make_specs, k, workers,
                                                    spill_dirs[k] if spill_dirs else None,
                                                    None if sink is None
                                                    else sink.keep_token_times),
                               daemon=True)
            proc.start()
            child_end.close()
            pipes.append(parent_end)
            procs.append(proc)
        try:
            parts = [_run_part(config, make_specs, 0, workers,
                               spill_dirs[0] if spill_dirs else None,
                               sink.keep_token_times if sink is not None else None)]
            for conn in pipes:
                parts.append(_receive(conn))
        finally:
            for proc in procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
        if isinstance(on_record, RecordSpill) and spill_dirs is not None:
            for directory in spill_dirs:
                on_record.absorb(directory)
        if sink is not None:
            for part in parts:
                assert part.sink is not None
                sink.absorb(part.sink)
    return _merge(parts, config.num_replicas_total, config.record_steps)


@dataclass(slots=True)
class _Part:
    records: list[RequestRecord]
    num_routed: list[int]
    num_preemptions: int
    step_log: list[StepLog] | None
    # counters that add up over parts (a split run has no migration, disaggregation or
    # autoscaling: LoRA adapter loads)
    topology_stats: dict[str, float]
    sink: ColumnSink | None = None  # the part's records as columns (a streamed run)


class _PinnedRouter:
    """Routes each request where the replayed routing already sent it (in arrival order)."""

    __slots__ = ("decisions",)

    def __init__(self) -> None:
        self.decisions: deque[int] = deque()

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        return RouteDecision(self.decisions.popleft())


def _run_part(config: SimConfig, make_specs: Callable[[], Iterable[RequestSpec]], index: int,
              workers: int, spill_dir: Path | None, sink_token_times: bool | None) -> _Part:
    """One worker's replicas; its records kept, spilled under `spill_dir`, or (unless
    `sink_token_times` is None) taken as columns by a `ColumnSink` that keeps token times
    or not."""
    cluster = build_cluster(config)
    views = [r.view() for r in cluster.replicas]  # load-blind routers read ids, not load
    router = make_router(config.router, **config.router_params)
    pinned = _PinnedRouter()
    cluster.router = pinned

    def own(specs: Iterable[RequestSpec]) -> Iterator[RequestSpec]:
        for spec in specs:
            replica_id = router.route(spec, views).replica_id
            if replica_id % workers == index:
                pinned.decisions.append(replica_id)
                yield spec

    sink = None if sink_token_times is None else ColumnSink(keep_token_times=sink_token_times)
    if sink is not None:
        records = cluster.run(own(make_specs()), on_record=sink)
        sink.finish()  # gaps counted and columns joined in the worker, sent as a few arrays
    elif spill_dir is None:
        records = cluster.run(own(make_specs()))
    else:
        with RecordSpill(spill_dir) as spill:
            records = cluster.run(own(make_specs()), on_record=spill)
    preemptions = sum(r.scheduler.num_preemptions for r in cluster.replicas)
    return _Part(records, cluster.num_routed, preemptions, cluster.step_log,
                 topology_stats(cluster), sink)


def _child(conn: Connection, config: SimConfig, make_specs: Callable[[], Iterable[RequestSpec]],
           index: int, workers: int, spill_dir: Path | None,
           sink_token_times: bool | None) -> None:
    try:
        conn.send(("ok", _run_part(config, make_specs, index, workers, spill_dir,
                                   sink_token_times)))
    except BaseException:  # noqa: BLE001  # reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _receive(conn: Connection) -> _Part:
    try:
        status, payload = conn.recv()
    except EOFError:
        raise RuntimeError("a simulation worker died without a result") from None
    if status != "ok":
        raise RuntimeError(f"a simulation worker failed:\n{payload}")
    return payload  # type: ignore[no-any-return]


def _merge(parts: list[_Part], num_replicas: int, record_steps: bool) -> SimRun:
    records: list[RequestRecord] = []
    num_routed = [0] * num_replicas
    step_log: list[StepLog] | None = [] if record_steps else None
    stats: dict[str, float] = {}
    for part in parts:
        for key, value in part.topology_stats.items():
            stats[key] = stats.get(key, 0) + value
        records.extend(part.records)
        num_routed = [a + b for a, b in zip(num_routed, part.num_routed, strict=True)]
        if step_log is not None and part.step_log is not None:
            step_log.extend(part.step_log)
    if step_log is not None:
        step_log.sort(key=lambda entry: (entry[1], entry[0]))  # (start, replica), as one run logs
    records.sort(key=_finish_order)
    return SimRun(records, num_routed, sum(p.num_preemptions for p in parts), step_log, stats)


def _finish_order(record: RequestRecord) -> Any:
    return (record.finish_s if record.finish_s is not None else float("inf"), record.replica_id)
