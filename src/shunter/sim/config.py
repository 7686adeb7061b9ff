"""What a simulation needs besides its workload: the cluster, the model, the policies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SimConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """A simulated cluster of identical replicas.

    `scheduler` holds SchedulerConfig overrides (max_num_batched_tokens, max_num_seqs,
    enable_chunked_prefill, preemption_mode, ...). KV capacity comes from the cost model
    (GPU memory left after weights) unless `num_blocks` is given; `max_model_len` defaults to
    the model's context. `swap_space_gib` sizes the host pool for swap preemption per replica.
    A policy with a TBT target (`sarathi`) gets the token budget that meets it from the cost
    model unless `scheduler` sets `max_num_batched_tokens`. `predictor_params` of the `learned`
    predictor may name a `model_path` (JSON from `shunter.workload.rank_training.save_model`).
    """

    model: str = "llama-3.1-8b"
    gpu: str = "a100-80gb"
    tp: int = 1
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

    def __post_init__(self) -> None:
        if self.tp < 1:
            raise ValueError(f"tp must be >= 1, got {self.tp}")
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {self.num_replicas}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.swap_space_gib < 0:
            raise ValueError(f"swap_space_gib must be >= 0, got {self.swap_space_gib}")
        reserved = {"num_blocks", "num_host_blocks", "emit_block_tables"} & set(self.scheduler)
        if reserved:
            raise ValueError(f"scheduler options {sorted(reserved)} are derived; set num_blocks "
                             "or swap_space_gib on the simulation instead")
