"""Build a simulated cluster from a SimConfig and run a workload through it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

from shunter.core.clock import ManualClock
from shunter.core.sched.registry import make_policy
from shunter.core.sched.scheduler import CoreScheduler, SchedulerConfig
from shunter.core.types import RequestSpec
from shunter.metrics.record import RequestRecord
from shunter.router.registry import make_router
from shunter.sim.cluster import ProgressFn, SimCluster
from shunter.sim.config import SimConfig
from shunter.sim.cost.interface import CostModel
from shunter.sim.cost.registry import make_cost_model
from shunter.sim.executor import SimExecutor
from shunter.sim.replica import SimReplica, StepLog

__all__ = ["SimRun", "build_cluster", "simulate"]

_GIB = 1024**3
_SCHEDULER_FIELDS = {f.name for f in fields(SchedulerConfig)}


@dataclass(slots=True)
class SimRun:
    records: list[RequestRecord]
    num_routed: list[int]
    num_preemptions: int
    step_log: list[StepLog] | None


def scheduler_config(config: SimConfig, cost_model: CostModel) -> SchedulerConfig:
    """The replica's SchedulerConfig: the user's overrides on top of what the hardware allows."""
    unknown = set(config.scheduler) - _SCHEDULER_FIELDS
    if unknown:
        raise ValueError(f"unknown scheduler options {sorted(unknown)}; valid: "
                         f"{', '.join(sorted(_SCHEDULER_FIELDS - {'num_blocks', 'num_host_blocks', 'emit_block_tables'}))}")
    block_size = int(config.scheduler.get("block_size", 16))
    num_blocks = config.num_blocks or cost_model.num_kv_blocks(block_size)
    block_bytes = cost_model.kv_bytes_per_token * block_size  # type: ignore[attr-defined]
    num_host_blocks = int(config.swap_space_gib * _GIB // block_bytes)
    options = {"max_model_len": cost_model.max_model_len, **config.scheduler}
    return SchedulerConfig(num_blocks=num_blocks, num_host_blocks=num_host_blocks,
                           emit_block_tables=False, **options)


def build_cluster(config: SimConfig) -> SimCluster:
    clock = ManualClock()
    cost_model = make_cost_model(config.cost_model, config.model, config.gpu, config.tp)
    sched_config = scheduler_config(config, cost_model)
    replicas = []
    for replica_id in range(config.num_replicas):
        scheduler = CoreScheduler(sched_config, make_policy(config.policy, **config.policy_params),
                                  clock)
        replicas.append(SimReplica(replica_id, scheduler, SimExecutor(cost_model), clock,
                                   fast_forward=config.fast_forward))
    router = make_router(config.router, **config.router_params)
    return SimCluster(replicas, router, clock, record_steps=config.record_steps)


def simulate(config: SimConfig, specs: Iterable[RequestSpec], *,
             on_progress: ProgressFn | None = None) -> SimRun:
    """Run `specs` (sorted by arrival) to completion; every request gets exactly one record."""
    cluster = build_cluster(config)
    records = cluster.run(specs, on_progress=on_progress)
    preemptions = sum(r.scheduler.num_preemptions for r in cluster.replicas)
    return SimRun(records, cluster.num_routed, preemptions, cluster.step_log)
