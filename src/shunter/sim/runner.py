"""Build a simulated cluster from a SimConfig and run a workload through it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shunter.core.clock import ManualClock
from shunter.core.predict.interface import ArrivalPredictor, Predictor
from shunter.core.sched.config import SCHEDULER_DEFAULTS
from shunter.core.sched.config import scheduler_config as build_scheduler_config
from shunter.core.sched.registry import make_policy
from shunter.core.sched.scheduler import CoreScheduler, SchedulerConfig
from shunter.core.types import DEFAULT_BLOCK_SIZE, RequestSpec
from shunter.errors import ConfigError
from shunter.metrics.record import RequestRecord
from shunter.router.registry import make_router
from shunter.sim.autoscale import Autoscaling, ScaleEvent
from shunter.sim.budget import budget_for_tbt
from shunter.sim.cluster import ClusterTopology, ProgressFn, RecordFn, SimCluster
from shunter.sim.config import ReplicaGroup, SimConfig
from shunter.sim.cost.interface import CostModel
from shunter.sim.cost.lora import AdapterCache, LoraCostModel, no_adapters_message
from shunter.sim.cost.registry import make_cost_model
from shunter.sim.cost.speculative import speculative_cost_model
from shunter.sim.executor import SimExecutor
from shunter.sim.footprint import check_memory, replica_bytes
from shunter.sim.gateway import SimGateway
from shunter.sim.replica import SimReplica, StepLog
from shunter.workload.program import FollowUps
from shunter.workload.rank_training import build_predictor as build_named_predictor

__all__ = ["SimRun", "build_cluster", "build_predictor", "check_cluster_memory",
           "cluster_memory_bytes", "replica_groups", "simulate", "topology_stats"]

_GIB = 1024**3


@dataclass(slots=True)
class SimRun:
    records: list[RequestRecord]
    num_routed: list[int]
    num_preemptions: int
    step_log: list[StepLog] | None
    # topology counters: migrations (started, completed, aborted, requeued, downtime), PD
    # handoffs and transfer times, autoscaling's cost; empty for a plain cluster
    topology_stats: dict[str, float] = field(default_factory=dict)
    scale_events: list[ScaleEvent] = field(default_factory=list)  # autoscaling's, in order


def scheduler_config(config: SimConfig, cost_model: CostModel,
                     num_blocks: int | None = None) -> SchedulerConfig:
    """The replica's SchedulerConfig: the user's overrides on top of what the hardware allows
    (`num_blocks`: this replica's KV capacity, if its group sets one)."""
    block_size = int(config.scheduler.get("block_size", DEFAULT_BLOCK_SIZE))
    num_blocks = num_blocks or config.num_blocks or cost_model.num_kv_blocks(block_size)
    block_bytes = cost_model.kv_bytes_per_token * block_size  # type: ignore[attr-defined]
    derived = {"num_blocks": num_blocks, "emit_block_tables": False,
               "num_host_blocks": int(config.swap_space_gib * _GIB // block_bytes)}
    if config.lora_config is not None:
        derived["max_loras"] = config.lora_config.max_loras
    defaults: dict[str, object] = {"max_model_len": cost_model.max_model_len}
    options = config.scheduler
    policy = make_policy(config.policy, **config.scoped_policy_params)
    tbt_slo_s = getattr(policy, "tbt_slo_s", None)
    if tbt_slo_s is not None:  # Sarathi-Serve: the budget follows from the TBT target
        if not options.get("enable_chunked_prefill", True):
            raise ConfigError(f"policy {config.policy!r} needs enable_chunked_prefill")
        if "max_num_batched_tokens" not in options:  # priced on the worst step: full batch and KV
            max_num_seqs = options.get("max_num_seqs", SCHEDULER_DEFAULTS["max_num_seqs"])
            defaults["max_num_batched_tokens"] = budget_for_tbt(
                cost_model, tbt_slo_s, num_decodes=min(max_num_seqs, num_blocks * block_size),
                decode_context_tokens=num_blocks * block_size)
    return build_scheduler_config(options, defaults=defaults, derived=derived)


def build_predictor(config: SimConfig) -> Predictor | None:
    """The simulation's output-length predictor, if it names one (one per cluster)."""
    if config.predictor is None:
        return None
    return build_named_predictor(config.predictor, config.predictor_params)


def replica_groups(config: SimConfig) -> tuple[ReplicaGroup, ...]:
    """The cluster's replicas as groups: its own `groups`, or one group of identical replicas
    (split into a prefill and a decode pool when disaggregated)."""
    if config.groups:
        return config.groups
    if not config.disaggregation:
        return (ReplicaGroup(gpu=config.gpu, count=config.num_replicas),)
    num_prefill = config.num_prefill_replicas or -(-config.num_replicas // 2)
    return (ReplicaGroup(gpu=config.gpu, count=num_prefill, role="prefill"),
            ReplicaGroup(gpu=config.gpu, count=config.num_replicas - num_prefill, role="decode"))


def cluster_memory_bytes(config: SimConfig, *, copies: int = 1) -> int:
    """The estimated memory of the cluster `build_cluster(config)` builds and runs
    (`shunter.sim.footprint`): each group's KV blocks and host blocks, as its replicas get them;
    `copies`: worker processes that each build the whole cluster (`simulate_parallel`)."""
    total = 0
    for group in replica_groups(config):
        cost_model = _group_cost_model(config, group)
        sched = scheduler_config(config, cost_model, group.num_blocks)
        total += group.count * replica_bytes(sched.num_blocks, sched.num_host_blocks,
                                             prefix_caching=sched.enable_prefix_caching,
                                             copies=copies)
    return total


def _group_cost_model(config: SimConfig, group: ReplicaGroup) -> CostModel:
    """The cost model of one replica group: its model, GPU and TP, the cluster's expert
    parallelism."""
    cost_model = make_cost_model(config.cost_model, group.model or config.model, group.gpu,
                                 group.tp or config.tp, ep=config.ep,
                                 expert_imbalance=config.expert_imbalance, pp=config.pp)
    spec = config.speculative_config  # the drafter takes memory and step time
    if spec is not None:
        cost_model = speculative_cost_model(cost_model, spec)
    lora = config.lora_config  # LoRA slots take KV memory and add step time
    return cost_model if lora is None else LoraCostModel(cost_model, lora)


def check_cluster_memory(config: SimConfig, *, copies: int = 1) -> None:
    """Refuse (ConfigError) a cluster that would not fit in this machine's available memory
    (built in `copies` worker processes), before anything is built."""
    num_replicas = config.num_replicas_total
    needed = cluster_memory_bytes(config)
    per_replica = needed / num_replicas
    what = f"{num_replicas} replicas ({per_replica / 1e6:.1f} MB each)"
    autoscale = config.autoscale_config
    if autoscale is not None and autoscale.max_replicas > num_replicas:  # all it may hold
        needed = round(per_replica * autoscale.max_replicas)
        what = f"up to {autoscale.max_replicas} replicas ({per_replica / 1e6:.1f} MB each)"
    if copies > 1:
        what += f" in each of {copies} workers"
        needed = cluster_memory_bytes(config, copies=copies)
    check_memory(needed, what)


def build_cluster(config: SimConfig) -> SimCluster:
    clock = ManualClock()
    predictor = build_predictor(config)
    replicas: list[SimReplica] = []
    for group in replica_groups(config):
        cost_model = _group_cost_model(config, group)
        sched_config = scheduler_config(config, cost_model, group.num_blocks)

        def make_replica(replica_id: int, cost_model: CostModel = cost_model,
                         sched_config: SchedulerConfig = sched_config,
                         role: str | None = group.role) -> SimReplica:
            policy = make_policy(config.policy, **config.scoped_policy_params)
            scheduler = CoreScheduler(sched_config, policy, clock)
            executor = SimExecutor(cost_model)
            if isinstance(cost_model, LoraCostModel):
                executor.lora = AdapterCache(cost_model)
            spec = config.speculative_config
            if spec is not None:  # (bulk decode runs assume one token per step: off)
                scheduler.enable_speculation(spec.num_speculative_tokens)
                executor.enable_speculation(spec.acceptance_rate, spec.seed)
            return SimReplica(replica_id, scheduler, executor, clock,
                              fast_forward=config.fast_forward and spec is None, role=role,
                              pp=config.pp)

        replicas += [make_replica(len(replicas) + i) for i in range(group.count)]
    autoscale = config.autoscale_config
    router = make_router(config.router, **config.router_params)
    decode_router = None
    if config.disaggregation:
        decode_params = (config.decode_router_params if config.decode_router is not None
                         else config.router_params)
        decode_router = make_router(config.decode_router or config.router, **decode_params)
    gateway = None
    if config.has_gateway:
        name, params, max_inflight = config.gateway_settings
        gateway = SimGateway(make_policy(name, **params), max_inflight=max_inflight,
                             num_replicas=len(replicas))
    topology = ClusterTopology(
        decode_router=decode_router, skip_prefill_cached_fraction=config.skip_prefill_cached_fraction,
        kv_link_bytes_s=config.kv_link_bytes_s,
        snapshot_interval_s=config.router_snapshot_interval_s,
        counts_in_flight=config.router_counts_in_flight, migration=config.migration_config(),
        gateway=gateway,  # one group when autoscaling (SimConfig checks): its factory
        autoscale=None if autoscale is None else Autoscaling(autoscale, make_replica))
    return SimCluster(replicas, router, clock, record_steps=config.record_steps, topology=topology,
                      predictor=None if predictor is None else ArrivalPredictor(predictor))


def simulate(config: SimConfig, specs: Iterable[RequestSpec], *,
             on_progress: ProgressFn | None = None, on_record: RecordFn | None = None,
             follow_ups: FollowUps | None = None) -> SimRun:
    """Run `specs` (sorted by arrival) to completion; every request gets exactly one record.

    `follow_ups`: requests released when another finishes (see `SimCluster.run`).
    A lazy `specs` (`iter_workload`) is read as the simulation reaches it. With `on_record`,
    records are streamed to it as requests finish (see `SimCluster.run`), `SimRun.records` is
    empty, and memory does not grow with the number of requests (`shunter.sim.stream`).
    A cluster too large for this machine's memory is refused first (`check_cluster_memory`)."""
    check_cluster_memory(config)
    if config.lora is None and isinstance(specs, Sequence):
        check_no_adapters(specs)
    cluster = build_cluster(config)
    end_s = [0.0]  # when the last request finished: the end of autoscaling's cost window
    if cluster.autoscaler is not None and on_record is not None:
        handed = on_record

        def on_record(record: RequestRecord) -> None:
            end_s[0] = max(end_s[0], record.finish_s or 0.0)
            handed(record)

    records = cluster.run(specs, on_progress=on_progress, on_record=on_record,
                          follow_ups=follow_ups)
    end_s[0] = max([end_s[0], *(r.finish_s or 0.0 for r in records)])
    preemptions = sum(r.scheduler.num_preemptions for r in cluster.replicas)
    events = [] if cluster.autoscaler is None else cluster.autoscaler.events
    return SimRun(records, cluster.num_routed, preemptions, cluster.step_log,
                  topology_stats(cluster, end_s[0]), events)


def check_no_adapters(specs: Sequence[RequestSpec]) -> None:
    """Refuse a workload that names LoRA adapters when the scenario models none: its requests
    would run as the base model without a word (a lazy workload is refused by the executor, at
    its first such request)."""
    named = [s for s in specs if s.lora_id is not None]
    if named:
        raise ConfigError(no_adapters_message(len(named), named[0].lora_id))



def topology_stats(cluster: SimCluster, end_s: float = 0.0) -> dict[str, float]:
    """The counters of the cluster's migration, disaggregation and autoscaling (its cost
    over [0, end_s]), flat."""
    out: dict[str, float] = {}
    if cluster.autoscaler is not None:
        out |= cluster.autoscaler.stats(end_s)
    m = cluster.migrator  # or, draining by migration without [cluster] migration, its own
    if m is None and cluster.autoscaler is not None:
        m = cluster.autoscaler.drainer
    if m is not None:
        out |= {"migrations_started": m.num_started, "migrations_completed": m.num_completed,
                "migrations_aborted": m.num_aborted, "migrations_requeued": m.num_requeued,
                "migration_downtime_max_s": max(m.downtime_s, default=0.0),
                "migration_downtime_mean_s": sum(m.downtime_s) / max(len(m.downtime_s), 1)}
    if cluster.disagg is not None:
        d = cluster.disagg
        out |= {"pd_handoffs": d.num_handoffs, "pd_prefilled_on_decode": d.num_prefilled_on_decode,
                "pd_transfer_mean_s": sum(d.transfer_s) / max(len(d.transfer_s), 1)}
    caches = [r.executor.lora for r in cluster.replicas if r.executor.lora is not None]
    if caches:  # LoRA: adapter copies host -> GPU, and reads from storage into host memory
        out |= {"lora_loads": sum(c.num_loads for c in caches),
                "lora_storage_loads": sum(c.num_storage_loads for c in caches)}
    return out
