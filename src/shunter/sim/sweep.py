"""Parameter sweeps: a grid of scenarios (policies x rates x seeds x cluster sizes), each one
simulated as an independent task, run in parallel and gathered into one row per grid point.

A task is a small picklable record (a SimConfig plus where its workload comes from), so the
same task runs in a local process (`concurrent.futures`, the default) or on a Ray cluster
(`ray` is an optional extra, imported only when a Ray address is given). Each task loads its
own workload from the trace file, re-timed with Poisson arrivals at the point's rate and seed:
a Ray cluster's workers must see the trace at the same path (a shared file system, or the
package's built-in traces, which install with shunter).

Rows come back in grid order whatever order tasks finish in, and every row depends only on
its task (seeded workload, deterministic simulator), so a sweep gives the same table with one
worker, many workers or Ray.
"""

from __future__ import annotations

import importlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

from shunter.core.sched.registry import scope_policy_params
from shunter.core.types import check_number
from shunter.metrics.summary import summarize
from shunter.sim.config import SimConfig
from shunter.sim.footprint import check_memory
from shunter.sim.runner import cluster_memory_bytes, simulate
from shunter.workload.loaders import iter_workload

__all__ = [
    "DEFAULT_METRIC",
    "SweepGrid",
    "SweepPoint",
    "SweepTask",
    "capacity",
    "check_tasks_memory",
    "curves",
    "flatten",
    "local_workers",
    "make_tasks",
    "run_point",
    "run_tasks",
]

DEFAULT_METRIC = "ttft_s.p99"
Row = dict[str, Any]
ResultFn = Callable[[Row], None]
CurvePoint = tuple[float, float, float, float]  # rate, mean over seeds, min, max


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepGrid:
    """The axes of a sweep; every combination is one scenario. Order is kept as given."""

    policies: tuple[str, ...]
    rates: tuple[float, ...]  # requests per second offered to the whole cluster
    seeds: tuple[int, ...] = (0,)
    replicas: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        for name in ("policies", "rates", "seeds", "replicas"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"a sweep needs at least one value in {name}")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has repeated values: {list(values)}")
        for rate in self.rates:
            check_number("rates", rate, gt=0)
        if any(n < 1 for n in self.replicas):
            raise ValueError(f"replicas must be >= 1, got {list(self.replicas)}")

    @property
    def num_points(self) -> int:
        return len(self.policies) * len(self.rates) * len(self.seeds) * len(self.replicas)


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepPoint:
    index: int  # position in grid order
    policy: str
    rate: float
    seed: int
    num_replicas: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepTask:
    """Everything a worker needs to run one grid point, and nothing live."""

    point: SweepPoint
    sim: SimConfig
    trace: str  # a path the worker can open
    trace_format: str | None = None
    num_requests: int | None = None
    zero_tokens: str = "error"
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None


def make_tasks(grid: SweepGrid, base: SimConfig, trace: str, *, trace_format: str | None = None,
               num_requests: int | None = None, zero_tokens: str = "error",
               ttft_slo_s: float | None = None, tpot_slo_s: float | None = None,
               policy_params: Mapping[str, Any] | None = None) -> list[SweepTask]:
    """One task per grid point, in grid order (policy, replicas, rate, seed; the last varies
    fastest), each a copy of `base` with the point's policy and replica count.

    `policy_params` (default: `base`'s) is split between the grid's policies: each gets the
    keys it takes and its own nested table; a key no policy of the grid takes is a ValueError
    (`scope_policy_params`)."""
    table = base.policy_params if policy_params is None else policy_params
    scoped = scope_policy_params(grid.policies, table)
    combos = itertools.product(grid.policies, grid.replicas, grid.rates, grid.seeds)
    tasks = []
    for index, (policy, num_replicas, rate, seed) in enumerate(combos):
        point = SweepPoint(index=index, policy=policy, rate=rate, seed=seed,
                           num_replicas=num_replicas)
        sim = replace(base, policy=policy, policy_params=scoped[policy],
                      num_replicas=num_replicas)
        tasks.append(SweepTask(point=point, sim=sim, trace=trace, trace_format=trace_format,
                               num_requests=num_requests, zero_tokens=zero_tokens,
                               ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s))
    return tasks


def flatten(data: dict[str, Any], prefix: str = "") -> Row:
    """{"ttft_s": {"p99": x}} -> {"ttft_s.p99": x}; lists and scalars are kept as they are."""
    out: Row = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value
    return out


def run_point(task: SweepTask) -> Row:
    """Simulate one grid point; returns its flat row (the point's axes, then every metric)."""
    point = task.point
    start_s = time.perf_counter()
    specs = iter_workload(task.trace, task.trace_format, num_requests=task.num_requests,
                          rate=point.rate, seed=point.seed, zero_tokens=task.zero_tokens)
    run = simulate(task.sim, specs)
    summary = summarize(run.records, ttft_slo_s=task.ttft_slo_s, tpot_slo_s=task.tpot_slo_s)
    wall_s = time.perf_counter() - start_s
    row: Row = {"index": point.index, "policy": point.policy, "rate": point.rate,
                "seed": point.seed, "replicas": point.num_replicas,
                "router": task.sim.router, "model": task.sim.model, "gpu": task.sim.gpu,
                "tp": task.sim.tp}
    row |= flatten(summary.to_dict())
    row["num_preemptions_total"] = run.num_preemptions
    row["wall_s"] = round(wall_s, 3)
    return row


def run_tasks(tasks: Sequence[SweepTask], *, max_workers: int | None = None,
              ray_address: str | None = None, on_result: ResultFn | None = None) -> list[Row]:
    """Run every task and return the rows in grid order.

    Local processes by default (`max_workers`, default: the CPU count, at most one per task;
    1 runs in this process); on the Ray cluster at `ray_address` when given ("auto" finds a
    running one, "local" starts one here; an already initialised Ray session in this process
    is used as it is).
    `on_result` sees each row as it finishes (for progress bars).
    """
    if not tasks:
        return []
    if ray_address is not None:
        rows = _run_ray(tasks, ray_address, on_result)
    else:
        workers = local_workers(max_workers, len(tasks))
        check_tasks_memory(tasks, workers)
        rows = _run_local(tasks, workers, on_result)
    return sorted(rows, key=lambda row: row["index"])


def local_workers(max_workers: int | None, num_tasks: int) -> int:
    """The processes a local sweep of `num_tasks` runs at once (default: the CPU count)."""
    workers = max_workers if max_workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {workers}")
    return min(workers, num_tasks)


def check_tasks_memory(tasks: Sequence[SweepTask], workers: int) -> None:
    """Refuse (ConfigError) a local sweep whose `workers` largest points, run at once, would
    not fit in this machine's available memory (a Ray cluster's nodes check their own)."""
    sizes = sorted(((cluster_memory_bytes(t.sim), t.point.num_replicas) for t in tasks),
                   reverse=True)[:workers]
    largest = max(n for _, n in sizes)
    what = (f"{len(sizes)} sweep points at once (--workers) of up to {largest} replicas each"
            if len(sizes) > 1 else f"a sweep point of {largest} replicas")
    check_memory(sum(b for b, _ in sizes), what)


def _run_local(tasks: Sequence[SweepTask], workers: int, on_result: ResultFn | None) -> list[Row]:
    if workers == 1:
        return list(_notify((run_point(task) for task in tasks), on_result))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending = {pool.submit(run_point, task) for task in tasks}
        rows: list[Row] = []
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            rows += _notify((future.result() for future in done), on_result)
    return rows


def _run_ray(tasks: Sequence[SweepTask], address: str, on_result: ResultFn | None) -> list[Row]:
    try:
        ray = importlib.import_module("ray")  # optional extra: `pip install shunter[ray]`
    except ImportError:
        raise ImportError("--ray needs the ray package: pip install 'shunter[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address)
    remote = ray.remote(num_cpus=1)(run_point)
    pending = [remote.remote(task) for task in tasks]
    rows: list[Row] = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        rows += _notify(ray.get(done), on_result)
    return rows


def _notify(rows: Iterable[Row], on_result: ResultFn | None) -> list[Row]:
    out = []
    for row in rows:
        if on_result is not None:
            on_result(row)
        out.append(row)
    return out


def curves(rows: Iterable[Row], metric: str) -> dict[tuple[str, int], list[CurvePoint]]:
    """`metric` against rate for each (policy, replicas): mean, min and max over seeds, rates
    ascending. Points where the metric is missing (None: nothing completed) are left out."""
    values: dict[tuple[str, int, float], list[float]] = {}
    for row in rows:
        if metric not in row:
            raise ValueError(f"unknown metric {metric!r}; valid: "
                             f"{', '.join(k for k, v in row.items() if _is_number(v))}")
        value = row[metric]
        if value is not None:
            values.setdefault((row["policy"], row["replicas"], row["rate"]), []).append(value)
    out: dict[tuple[str, int], list[CurvePoint]] = {}
    for (policy, replicas, rate), vs in sorted(values.items()):
        out.setdefault((policy, replicas), []).append((rate, sum(vs) / len(vs), min(vs), max(vs)))
    return out


def capacity(curve: Sequence[CurvePoint], limit: float) -> float | None:
    """The highest rate up to which the mean metric stays within `limit` (None if even the
    lowest rate exceeds it): the load a cluster sustains under an SLO on this metric."""
    best = None
    for rate, mean, _, _ in curve:
        if mean > limit:
            break
        best = rate
    return best


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
