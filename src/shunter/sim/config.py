"""What a simulation needs besides its workload: the cluster, the model, the policies."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from shunter.core.sched.config import check_scheduler_options
from shunter.core.sched.gateway_queue import gateway_refusal
from shunter.core.sched.policy import EarlyStoppingPolicy
from shunter.core.sched.registry import make_policy, scope_policy_params
from shunter.core.types import check_number
from shunter.errors import check_keys
from shunter.router.autoscale import AutoscaleConfig
from shunter.sim.cost.catalog import get_model
from shunter.sim.cost.lora import LoraConfig
from shunter.sim.cost.moe import DEFAULT_EXPERT_IMBALANCE, check_parallelism
from shunter.sim.cost.pipeline import check_pipeline
from shunter.sim.cost.speculative import SpeculativeConfig

__all__ = ["DEFAULT_GATEWAY_MAX_INFLIGHT", "DEFAULT_GATEWAY_POLICY", "DEFAULT_KV_LINK_BYTES_S",
           "ROLES", "SIM_DERIVED_SCHEDULER_OPTIONS", "TETRIINFER_CHUNK_TOKENS", "TOPOLOGIES",
           "MigrationConfig", "ReplicaGroup", "SimConfig"]

# KV transfer link between replicas: 200 Gb/s InfiniBand / RoCE per GPU, the usual
# cross-node fabric (Splitwise assumes InfiniBand between machines; DistServe's low-bandwidth
# setting is 25 GB/s too). NVLink within a node is ~10x faster; set it per scenario.
DEFAULT_KV_LINK_BYTES_S = 25e9
ROLES = ("prefill", "decode")
DEFAULT_GATEWAY_POLICY = "vtc"  # as `shunter serve`'s (shunter.gateway.settings)
DEFAULT_GATEWAY_MAX_INFLIGHT = 256  # a backend's max_concurrency in a gateway config
# Named topologies (`SimConfig.topology`). TetriInfer (Hu et al. 2024) runs prefill instances
# on fixed-size chunks at the accelerator's saturation point: 512 tokens reach 99% of the
# roofline model's peak prefill throughput of an 8B model on an A100 (13.2k of 13.3k tok/s).
TOPOLOGIES = ("tetriinfer",)
TETRIINFER_CHUNK_TOKENS = 512
# SchedulerConfig fields the simulator sets itself (from the cost model and swap_space_gib)
SIM_DERIVED_SCHEDULER_OPTIONS = frozenset({"num_blocks", "num_host_blocks", "emit_block_tables",
                                           "max_loras"})  # (max_loras: from the [lora] table)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaGroup:
    """`count` identical replicas in a heterogeneous cluster: their GPU, and optionally their
    model, TP degree, KV blocks and (disaggregated clusters) pool role."""

    gpu: str
    count: int = 1
    model: str | None = None  # None: the cluster's model
    tp: int | None = None  # None: the cluster's tp
    num_blocks: int | None = None  # None: from the cost model (or the cluster's num_blocks)
    role: str | None = None  # "prefill" or "decode" with disaggregation, else None

    def __post_init__(self) -> None:
        for name in ("gpu", "model", "count", "tp", "num_blocks"):  # a scenario's table is untyped
            value, kind = getattr(self, name), str if name in ("gpu", "model") else int
            if value is not None and (type(value) is bool or not isinstance(value, kind)):
                what = "a string" if kind is str else "a whole number"
                raise ValueError(f"a replica group's {name} must be {what}, got {value!r}")
        if self.count < 1:
            raise ValueError(f"a replica group needs count >= 1, got {self.count}")
        if self.tp is not None and self.tp < 1:
            raise ValueError(f"tp must be >= 1, got {self.tp}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")

    @classmethod
    def from_dict(cls, data: Any) -> ReplicaGroup:
        if not isinstance(data, dict):
            raise ValueError(f"a replica group must be a table, got {data!r}")
        check_keys(data, (f.name for f in fields(cls)), "replica group")
        if "gpu" not in data:
            raise ValueError("a replica group needs a gpu")
        return cls(**data)


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationConfig:
    """Llumnix-style live migration (`shunter.sim.migration`).

    Every `interval_s`, replicas whose freeness (free KV blocks per request after their queue,
    with high-priority headroom) is below `out_threshold` send one running request each to
    the freest replicas above `in_threshold`. The KV is copied in stages while the request
    keeps decoding; when what is left fits in `last_stage_max_blocks` (or after `max_stages`),
    the request stops, its last blocks are copied, and it resumes on the destination.
    """

    interval_s: float = 0.1
    out_threshold: float = 16.0  # blocks per request
    in_threshold: float = 64.0
    max_stages: int = 3
    last_stage_max_blocks: int = 4
    high_priority: int | None = None  # requests with priority <= this are high priority
    priority_headroom_blocks: int = 0  # virtual usage each high-priority request adds

    def __post_init__(self) -> None:
        check_number("migration interval_s", self.interval_s, gt=0)
        check_number("migration out_threshold", self.out_threshold)
        check_number("migration in_threshold", self.in_threshold)
        if self.in_threshold < self.out_threshold:
            raise ValueError("migration in_threshold must be >= out_threshold, got "
                             f"{self.in_threshold} < {self.out_threshold}")
        check_number("migration max_stages", self.max_stages, ge=1)
        check_number("migration last_stage_max_blocks", self.last_stage_max_blocks, ge=0)
        check_number("migration priority_headroom_blocks", self.priority_headroom_blocks, ge=0)
        if self.high_priority is not None:
            check_number("migration high_priority", self.high_priority)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MigrationConfig:
        check_keys(data, (f.name for f in fields(cls)), "migration")
        return cls(**data)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """A simulated cluster: identical replicas, or `groups` of different ones, optionally in
    prefill and decode pools, with live migration and a router that sees stale views.

    `scheduler` holds SchedulerConfig overrides (max_num_batched_tokens, max_num_seqs,
    enable_chunked_prefill, preemption_mode, ...). KV capacity comes from the cost model
    (GPU memory left after weights) unless `num_blocks` is given; `max_model_len` defaults to
    the model's context. `swap_space_gib` sizes the host pool for swap preemption per replica.
    A policy with a TBT target (`sarathi`) gets the token budget that meets it from the cost
    model unless `scheduler` sets `max_num_batched_tokens`. `policy_params` (and
    `gateway_params`) may nest a table under a policy's name, read only when that policy runs;
    a bare key must be one the policy takes (`shunter.core.sched.registry.scope_policy_params`,
    which also splits one table between the policies of a comparison or a sweep).
    `predictor_params` of the `learned` predictor may name a `model_path` (JSON from
    `shunter.workload.rank_training.save_model`).
    """

    model: str = "llama-3.1-8b"
    gpu: str = "a100-80gb"
    tp: int = 1
    # Expert parallelism (mixture-of-experts models, roofline cost model): each replica's routed
    # experts split over `ep` of its `tp` GPUs (`shunter.sim.cost.moe`), the busiest GPU's
    # expert load `expert_imbalance` times the mean. Applies to every replica group.
    ep: int = 1
    expert_imbalance: float = DEFAULT_EXPERT_IMBALANCE
    # Pipeline parallelism (roofline cost model, dense models): each replica is `pp` stages of
    # `tp` GPUs with up to `pp` batches in flight (`shunter.sim.pipeline`). Every replica group.
    pp: int = 1
    num_replicas: int = 1
    policy: str = "fcfs"
    policy_params: dict[str, Any] = field(default_factory=dict)
    predictor: str | None = None  # sets predicted output lengths (sjf, ltr): shunter.core.predict
    predictor_params: dict[str, Any] = field(default_factory=dict)
    router: str = "least_load"
    router_params: dict[str, Any] = field(default_factory=dict)
    cost_model: str = "roofline"
    scheduler: dict[str, Any] = field(default_factory=dict)
    num_blocks: int | None = None
    swap_space_gib: float = 4.0
    record_steps: bool = False
    fast_forward: bool = True  # apply steady decode runs in bulk (identical results, faster)
    # Heterogeneous replicas: when set, the groups replace gpu / tp / num_replicas.
    groups: tuple[ReplicaGroup, ...] = ()
    # Prefill/decode disaggregation (`shunter.sim.disagg`): `router` picks a prefill replica,
    # `decode_router` (default: same name) a decode replica; without groups the first
    # `num_prefill_replicas` replicas (default half, rounded up) form the prefill pool.
    disaggregation: bool = False
    num_prefill_replicas: int | None = None
    decode_router: str | None = None
    decode_router_params: dict[str, Any] = field(default_factory=dict)
    # conditional disaggregation: prefill on the decode replica when at least this fraction of
    # the prompt is in its prefix cache (None: always use the prefill pool)
    skip_prefill_cached_fraction: float | None = None
    # A named topology fills the settings above it needs, the user's own winning:
    # "tetriinfer" = disaggregation, prefill steps of TETRIINFER_CHUNK_TOKENS tokens (chunked
    # prefill; scheduler max_num_batched_tokens), decode_router "tetriinfer"
    # (`shunter.router.policies.tetriinfer`; its params in decode_router_params).
    topology: str | None = None
    kv_link_bytes_s: float = DEFAULT_KV_LINK_BYTES_S  # replica-to-replica KV transfers
    # Router staleness (`shunter.sim.staleness`): 0 = fresh views at every decision.
    router_snapshot_interval_s: float = 0.0
    router_counts_in_flight: bool = True
    # Live migration (`shunter.sim.migration`): None = off; else MigrationConfig keys.
    migration: dict[str, Any] | None = None
    # The gateway tier (`shunter.sim.gateway`, what `shunter serve` does in front of its
    # backends): on when either is set. Requests wait in `gateway_policy`'s order (default
    # vtc, the live gateway's) and go to a replica holding fewer than `gateway_max_inflight`
    # of them (default 256, a remote backend's max_concurrency in a gateway config).
    gateway_policy: str | None = None
    gateway_params: dict[str, Any] = field(default_factory=dict)
    gateway_max_inflight: int | None = None
    # Autoscaling (`shunter.sim.autoscale`, decided by `shunter.router.autoscale`): None = off;
    # an AutoscaleConfig or a table of its keys. `num_replicas` is the starting count.
    autoscale: AutoscaleConfig | dict[str, Any] | None = None
    # LoRA adapters (`shunter.sim.cost.lora`: adapter slots, their memory, compute and loads;
    # the scheduler's max_loras): None = off; a LoraConfig or a table of its keys.
    lora: LoraConfig | dict[str, Any] | None = None
    # Speculative decoding (`shunter.sim.cost.speculative`, `shunter.core.sched.speculative`):
    # None = off; a SpeculativeConfig or a table of its keys. Turns bulk decode runs off.
    speculative: SpeculativeConfig | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        groups = tuple(g if isinstance(g, ReplicaGroup) else ReplicaGroup.from_dict(g)
                       for g in self.groups)
        object.__setattr__(self, "groups", groups)
        self._expand_topology()
        self._check_topology()
        if self.tp < 1:
            raise ValueError(f"tp must be >= 1, got {self.tp}")
        self._check_experts()
        self._check_pipeline()
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {self.num_replicas}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        check_number("swap_space_gib", self.swap_space_gib, ge=0)
        scope_policy_params((self.policy,), self.policy_params)  # a key it does not take fails
        self._check_gateway()
        self._check_autoscale()
        self._check_lora()
        self._check_speculative()
        reserved = SIM_DERIVED_SCHEDULER_OPTIONS & set(self.scheduler)
        if reserved:
            raise ValueError(f"scheduler options {sorted(reserved)} are derived; set num_blocks "
                             "or swap_space_gib on the simulation, max_loras in [lora], instead")
        check_scheduler_options(self.scheduler, derived=SIM_DERIVED_SCHEDULER_OPTIONS)

    @property
    def has_gateway(self) -> bool:
        return self.gateway_policy is not None or self.gateway_max_inflight is not None

    @property
    def scoped_policy_params(self) -> dict[str, Any]:
        """The parameters `policy` gets out of `policy_params` (its own table, bare keys)."""
        return scope_policy_params((self.policy,), self.policy_params)[self.policy]

    @property
    def gateway_settings(self) -> tuple[str, dict[str, Any], int]:
        """(policy, params, max in flight per replica) of the gateway tier, defaults filled."""
        name = self.gateway_policy or DEFAULT_GATEWAY_POLICY
        return (name, scope_policy_params((name,), self.gateway_params)[name],
                self.gateway_max_inflight or DEFAULT_GATEWAY_MAX_INFLIGHT)

    @property
    def num_replicas_total(self) -> int:
        return sum(g.count for g in self.groups) if self.groups else self.num_replicas

    @property
    def autoscale_config(self) -> AutoscaleConfig | None:
        assert not isinstance(self.autoscale, dict), "made a config by __post_init__"
        return self.autoscale

    @property
    def lora_config(self) -> LoraConfig | None:
        assert not isinstance(self.lora, dict), "made a config by __post_init__"
        return self.lora

    @property
    def speculative_config(self) -> SpeculativeConfig | None:
        assert not isinstance(self.speculative, dict), "made a config by __post_init__"
        return self.speculative

    def _check_speculative(self) -> None:
        if isinstance(self.speculative, dict):
            object.__setattr__(self, "speculative", SpeculativeConfig.from_table(self.speculative))
        config = self.speculative_config
        if config is None:
            return
        if self.cost_model.strip().lower() != "roofline":
            raise ValueError(f"speculative decoding needs the roofline cost model, not "
                             f"{self.cost_model!r}")
        if self.lora is not None or self.pp > 1:
            raise ValueError("speculative decoding is not modelled with lora or pp > 1")
        if isinstance(make_policy(self.policy, **self.scoped_policy_params), EarlyStoppingPolicy):
            raise ValueError(f"speculative decoding is not modelled with policy {self.policy!r}, "
                             "which stops requests from probes of each token")
        for group in self.groups or (ReplicaGroup(gpu=self.gpu),):
            config.check_target(group.model or self.model)

    def _check_lora(self) -> None:
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraConfig.from_table(self.lora))
        if self.lora is not None and self.cost_model.strip().lower() != "roofline":
            raise ValueError(f"lora needs the roofline cost model, not {self.cost_model!r}")

    def _check_autoscale(self) -> None:
        if isinstance(self.autoscale, dict):
            object.__setattr__(self, "autoscale",
                               AutoscaleConfig.from_table(self.autoscale, "[autoscale]"))
        config = self.autoscale_config
        if config is None:
            return
        if self.groups or self.disaggregation or self.has_gateway:
            raise ValueError("autoscaling is modelled for one pool of identical replicas, not "
                             "with replica groups, disaggregation or a gateway tier")
        if not config.min_replicas <= self.num_replicas <= config.max_replicas:
            raise ValueError(f"the starting replicas ({self.num_replicas}) must lie within "
                             f"[autoscale] min_replicas ({config.min_replicas}) and "
                             f"max_replicas ({config.max_replicas})")

    def migration_config(self) -> MigrationConfig | None:
        return None if self.migration is None else MigrationConfig.from_dict(self.migration)

    def _check_experts(self) -> None:
        if type(self.ep) is bool or not isinstance(self.ep, int):
            raise ValueError(f"ep must be a whole number, got {self.ep!r}")
        if self.ep < 1:
            raise ValueError(f"ep must be >= 1, got {self.ep}")
        check_number("expert_imbalance", self.expert_imbalance, ge=1)
        if self.ep == 1:
            return
        if self.cost_model.strip().lower() != "roofline":
            raise ValueError(f"ep needs the roofline cost model, not {self.cost_model!r}")
        for group in self.groups or (ReplicaGroup(gpu=self.gpu),):
            check_parallelism(get_model(group.model or self.model), group.tp or self.tp,
                              self.ep, self.expert_imbalance)

    def _check_pipeline(self) -> None:
        if type(self.pp) is bool or not isinstance(self.pp, int) or self.pp < 1:
            raise ValueError(f"pp must be a whole number >= 1, got {self.pp!r}")
        if self.pp == 1:
            return
        if self.cost_model.strip().lower() != "roofline":
            raise ValueError(f"pp needs the roofline cost model, not {self.cost_model!r}")
        if self.disaggregation or self.migration is not None:
            raise ValueError(f"pp={self.pp} is not modelled with disaggregation or live migration "
                             "(they move requests between steps; a pipeline always has some)")
        for group in self.groups or (ReplicaGroup(gpu=self.gpu),):
            check_pipeline(get_model(group.model or self.model), self.pp)

    def _check_gateway(self) -> None:
        if self.gateway_params and self.gateway_policy is None:
            raise ValueError("gateway params are given but no gateway policy")
        if not self.has_gateway:
            return
        if self.gateway_max_inflight is not None and self.gateway_max_inflight < 1:
            raise ValueError(f"gateway max_inflight_per_replica must be >= 1, got "
                             f"{self.gateway_max_inflight}")
        if self.disaggregation:
            raise ValueError("a gateway tier in front of disaggregated pools is not modelled")
        try:
            name, params, _ = self.gateway_settings
            refusal = gateway_refusal(make_policy(name, **params))
        except ValueError as exc:
            raise ValueError(f"gateway policy: {exc}") from None
        if refusal is not None:
            raise ValueError(f"gateway policy: {refusal}")

    def _expand_topology(self) -> None:
        """Fill in what the named topology implies (defaults only; see `topology`)."""
        if self.topology is None:
            return
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {self.topology!r}; valid: {', '.join(TOPOLOGIES)}")
        if self.scheduler.get("enable_chunked_prefill", True) is not True:
            raise ValueError(f"topology {self.topology!r} prefills in fixed-size chunks: "
                             "scheduler enable_chunked_prefill must be true")
        object.__setattr__(self, "disaggregation", True)
        object.__setattr__(self, "scheduler", {"max_num_batched_tokens": TETRIINFER_CHUNK_TOKENS,
                                               **self.scheduler})
        if self.decode_router is None:
            object.__setattr__(self, "decode_router", "tetriinfer")

    def _check_topology(self) -> None:
        check_number("kv_link_bytes_s", self.kv_link_bytes_s, gt=0)
        check_number("router_snapshot_interval_s", self.router_snapshot_interval_s, ge=0)
        if self.skip_prefill_cached_fraction is not None:
            check_number("skip_prefill_cached_fraction", self.skip_prefill_cached_fraction,
                         ge=0, le=1)
        self.migration_config()  # validates
        roles = [g.role for g in self.groups]
        if not self.disaggregation:
            if any(roles):
                raise ValueError("replica group roles need disaggregation = true")
            return
        if self.groups:
            if None in roles or set(roles) != set(ROLES):
                raise ValueError("with disaggregation every replica group needs a role, and "
                                 "both pools (prefill, decode) need one")
            return
        num_prefill = self.num_prefill_replicas
        if self.num_replicas < 2 or (num_prefill is not None
                                     and not 1 <= num_prefill < self.num_replicas):
            what = "disaggregation" if self.topology is None else f"topology {self.topology!r}"
            raise ValueError(f"{what} needs >= 1 prefill and >= 1 decode replica; got "
                             f"num_prefill_replicas = {num_prefill or 'half'} of "
                             f"{self.num_replicas} replicas")
