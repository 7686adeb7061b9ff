"""Scheduler configuration: one validated dataclass, defaults in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal, get_args

from shunter.core.types import DEFAULT_BLOCK_SIZE

__all__ = ["SCHEDULER_DEFAULTS", "AdmissionMode", "HostKvOffload", "KvAllocation",
           "PreemptionMode", "SchedulerConfig", "check_scheduler_options", "scheduler_config"]

PreemptionMode = Literal["recompute", "swap"]
AdmissionMode = Literal["watermark", "whole"]
KvAllocation = Literal["lru", "contiguous"]
HostKvOffload = Literal["sessions", "all"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerConfig:
    """Knobs of the engine-level scheduler (vLLM's names where it has them).

    - `enable_chunked_prefill`: Sarathi-Serve stall-free batching: running requests first,
      prompts chunked into the leftover token budget. Off: vLLM-v0/Orca prefill-first steps,
      where a step that admits prompts runs only whole prompts and decodes stall.
    - `admission`: "watermark" admits while `watermark` of the blocks stay free; "whole"
      also reserves every running request's whole sequence (prompt + max output, capped by
      the context), so admitted requests never preempt each other.
    - `preemption_mode`: "recompute" drops a victim's KV (its blocks stay in the prefix cache,
      so it usually re-hits its own prefix); "swap" copies it to `num_host_blocks` host blocks
      and falls back to recompute when the host pool is full.
    - `kv_allocation`: "lru" hands out free blocks in LRU order (vLLM: a request's blocks end
      up scattered); "contiguous" extends each request's run of block ids when it can
      (FastSwitch's block groups), so swaps copy few large runs instead of many blocks.
    - `host_kv_reuse`: keep host copies of swapped KV after swap-in and offload finished
      conversation turns (requests with a session), keyed by block hash, so later swap-outs
      copy only what is new and a session's next turn copies its history back in instead of
      recomputing it (FastSwitch's KV reuse). Needs `num_host_blocks`.
    - `host_kv_offload` (with `host_kv_reuse`): which finished requests' full blocks go to the
      host tier: "sessions" (conversation turns, FastSwitch) or "all" (every request, as
      LMCache's CPU tier and vLLM's KV offloading store every prefix); any later prompt whose
      prefix was evicted from the GPU copies it back instead of recomputing it. The stores
      overlap the next step's forward pass (`SchedulerOutput.offload`).
    - `emit_block_tables`: put each request's block table in the step output. The simulator
      turns it off because no model reads it; decisions are the same either way.
    - `max_loras` (vLLM's name): at most this many distinct LoRA adapters among the running
      requests, so in any step; a waiting request whose adapter would exceed it is passed
      over (`core.sched.lora`). 0: no limit (LoRA off).
    """

    num_blocks: int
    block_size: int = DEFAULT_BLOCK_SIZE
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    max_model_len: int = 8192
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    preemption_mode: PreemptionMode = "recompute"
    num_host_blocks: int = 0
    admission: AdmissionMode = "watermark"
    watermark: float = 0.01
    emit_block_tables: bool = True
    kv_allocation: KvAllocation = "lru"
    host_kv_reuse: bool = False
    host_kv_offload: HostKvOffload = "sessions"
    max_loras: int = 0

    def __post_init__(self) -> None:
        for name in ("num_blocks", "block_size", "max_num_batched_tokens", "max_num_seqs",
                     "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_host_blocks < 0:
            raise ValueError(f"num_host_blocks must be >= 0, got {self.num_host_blocks}")
        if self.max_loras < 0:
            raise ValueError(f"max_loras must be >= 0 (0: no LoRA limit), got {self.max_loras}")
        if not 0.0 <= self.watermark < 1.0:
            raise ValueError(f"watermark must be in [0, 1), got {self.watermark}")
        if self.preemption_mode not in ("recompute", "swap"):
            raise ValueError(f"preemption_mode must be 'recompute' or 'swap', got {self.preemption_mode!r}")
        if self.kv_allocation not in ("lru", "contiguous"):
            raise ValueError(f"kv_allocation must be 'lru' or 'contiguous', got {self.kv_allocation!r}")
        if self.host_kv_offload not in ("sessions", "all"):
            raise ValueError(f"host_kv_offload must be 'sessions' or 'all', "
                             f"got {self.host_kv_offload!r}")
        if self.host_kv_offload == "all" and not self.host_kv_reuse:
            raise ValueError("host_kv_offload = 'all' needs host_kv_reuse = true (and host blocks)")
        if self.admission not in ("watermark", "whole"):
            raise ValueError(f"admission must be 'watermark' or 'whole', got {self.admission!r}")

    @property
    def max_seq_len(self) -> int:
        """The longest sequence that can run: the context, or the whole KV cache if smaller."""
        return min(self.max_model_len, self.num_blocks * self.block_size)


# Every option's default (all but num_blocks, which each runtime derives)
SCHEDULER_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(SchedulerConfig)
                                      if f.default is not MISSING}

_LITERALS: dict[str, tuple[str, ...]] = {
    "PreemptionMode": get_args(PreemptionMode), "AdmissionMode": get_args(AdmissionMode),
    "KvAllocation": get_args(KvAllocation), "HostKvOffload": get_args(HostKvOffload)}


def _check_type(name: str, kind: str, value: Any) -> str | None:
    """Why `value` cannot be option `name` of annotation `kind`, or None if it can."""
    if kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if kind == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else \
            "must be an integer"
    if kind == "float":
        return None if isinstance(value, int | float) and not isinstance(value, bool) else \
            "must be a number"
    if kind in _LITERALS:
        allowed = _LITERALS[kind]
        return None if value in allowed else f"must be one of {', '.join(map(repr, allowed))}"
    return None


def check_scheduler_options(options: Mapping[str, Any], *, derived: frozenset[str] | set[str]
                            = frozenset(), where: str = "scheduler") -> None:
    """Raise ValueError naming the option if `options` (a user's SchedulerConfig overrides)
    holds an unknown name, one the runtime derives itself (`derived`), or a value of the wrong
    type. Value ranges are checked when the SchedulerConfig is built."""
    kinds = {f.name: str(f.type) for f in fields(SchedulerConfig)}
    unknown = set(options) - set(kinds)
    if unknown:
        valid = ", ".join(sorted(set(kinds) - set(derived)))
        raise ValueError(f"unknown {where} options {sorted(unknown)}; valid: {valid}")
    fixed = set(options) & set(derived)
    if fixed:
        raise ValueError(f"{where}: options {sorted(fixed)} cannot be set here (this runtime "
                         "derives them or does not support them)")
    for name, value in options.items():
        problem = _check_type(name, kinds[name], value)
        if problem is not None:
            raise ValueError(f"{where}: {name} {problem}, got {value!r}")


def scheduler_config(options: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None,
                     derived: Mapping[str, Any], where: str = "scheduler") -> SchedulerConfig:
    """The one way a runtime builds its SchedulerConfig from a user's `options`: on top of
    SchedulerConfig's own defaults, the runtime's `defaults` (the engine batches less on a
    CPU), the user's options, and what the runtime `derived` itself and the user may not set
    (the simulator's KV capacity from its cost model). ValueError naming the option if bad."""
    check_scheduler_options(options, derived=set(derived), where=where)
    try:
        return SchedulerConfig(**{**(defaults or {}), **options, **derived})
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
