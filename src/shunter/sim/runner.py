"""Build a simulated cluster from a SimConfig and run a workload through it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from shunter.core.clock import ManualClock
from shunter.core.predict.interface import Predictor, SessionTracker
from shunter.core.predict.registry import make_predictor
from shunter.core.sched.registry import make_policy
from shunter.core.sched.scheduler import CoreScheduler, SchedulerConfig
from shunter.core.types import RequestId, RequestSpec
from shunter.errors import ConfigError
from shunter.metrics.record import RequestRecord
from shunter.router.registry import make_router
from shunter.sim.budget import budget_for_tbt
from shunter.sim.cluster import ProgressFn, RecordFn, SimCluster
from shunter.sim.config import SimConfig
from shunter.sim.cost.interface import CostModel
from shunter.sim.cost.registry import make_cost_model
from shunter.sim.executor import SimExecutor
from shunter.sim.replica import SimReplica, StepLog
from shunter.workload.program import FollowUp
from shunter.workload.rank_training import load_model

__all__ = ["SimRun", "build_cluster", "build_predictor", "simulate"]

_GIB = 1024**3
_SCHEDULER_FIELDS = {f.name for f in fields(SchedulerConfig)}
_MAX_NUM_SEQS_DEFAULT = next(f.default for f in fields(SchedulerConfig) if f.name == "max_num_seqs")


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
    tbt_slo_s = getattr(make_policy(config.policy, **config.policy_params), "tbt_slo_s", None)
    if tbt_slo_s is not None:  # Sarathi-Serve: the budget follows from the TBT target
        if not options.get("enable_chunked_prefill", True):
            raise ConfigError(f"policy {config.policy!r} needs enable_chunked_prefill")
        if "max_num_batched_tokens" not in options:  # priced on the worst step: full batch and KV
            max_num_seqs = options.get("max_num_seqs", _MAX_NUM_SEQS_DEFAULT)
            options["max_num_batched_tokens"] = budget_for_tbt(
                cost_model, tbt_slo_s, num_decodes=min(max_num_seqs, num_blocks * block_size),
                decode_context_tokens=num_blocks * block_size)
    return SchedulerConfig(num_blocks=num_blocks, num_host_blocks=num_host_blocks,
                           emit_block_tables=False, **options)


def build_predictor(config: SimConfig) -> Predictor | None:
    """The simulation's output-length predictor, if it names one (one per cluster)."""
    if config.predictor is None:
        return None
    params = dict(config.predictor_params)
    if "model_path" in params:
        params.update(load_model(params.pop("model_path")))
    return make_predictor(config.predictor, **params)


def build_cluster(config: SimConfig) -> SimCluster:
    clock = ManualClock()
    cost_model = make_cost_model(config.cost_model, config.model, config.gpu, config.tp)
    sched_config = scheduler_config(config, cost_model)
    predictor, sessions = build_predictor(config), SessionTracker()
    replicas = []
    for replica_id in range(config.num_replicas):
        scheduler = CoreScheduler(sched_config, make_policy(config.policy, **config.policy_params),
                                  clock)
        replicas.append(SimReplica(replica_id, scheduler, SimExecutor(cost_model), clock,
                                   fast_forward=config.fast_forward, predictor=predictor,
                                   sessions=sessions))
    router = make_router(config.router, **config.router_params)
    return SimCluster(replicas, router, clock, record_steps=config.record_steps)


def simulate(config: SimConfig, specs: Iterable[RequestSpec], *,
             on_progress: ProgressFn | None = None, on_record: RecordFn | None = None,
             follow_ups: Mapping[RequestId, FollowUp] | None = None) -> SimRun:
    """Run `specs` (sorted by arrival) to completion; every request gets exactly one record.

    `follow_ups`: requests released when another finishes (see `SimCluster.run`).
    A lazy `specs` (`iter_workload`) is read as the simulation reaches it. With `on_record`,
    records are streamed to it as requests finish (see `SimCluster.run`), `SimRun.records` is
    empty, and memory does not grow with the number of requests (`shunter.sim.stream`)."""
    cluster = build_cluster(config)
    records = cluster.run(specs, on_progress=on_progress, on_record=on_record,
                          follow_ups=follow_ups)
    preemptions = sum(r.scheduler.num_preemptions for r in cluster.replicas)
    return SimRun(records, cluster.num_routed, preemptions, cluster.step_log)
