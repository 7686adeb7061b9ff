"""Scheduler configuration: one validated dataclass, defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shunter.core.types import DEFAULT_BLOCK_SIZE

__all__ = ["AdmissionMode", "KvAllocation", "PreemptionMode", "SchedulerConfig"]

PreemptionMode = Literal["recompute", "swap"]
AdmissionMode = Literal["watermark", "whole"]
KvAllocation = Literal["lru", "contiguous"]


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
    - `emit_block_tables`: put each request's block table in the step output. The simulator
      turns it off because no model reads it; decisions are the same either way.
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

    def __post_init__(self) -> None:
        for name in ("num_blocks", "block_size", "max_num_batched_tokens", "max_num_seqs",
                     "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_host_blocks < 0:
            raise ValueError(f"num_host_blocks must be >= 0, got {self.num_host_blocks}")
        if not 0.0 <= self.watermark < 1.0:
            raise ValueError(f"watermark must be in [0, 1), got {self.watermark}")
        if self.preemption_mode not in ("recompute", "swap"):
            raise ValueError(f"preemption_mode must be 'recompute' or 'swap', got {self.preemption_mode!r}")
        if self.kv_allocation not in ("lru", "contiguous"):
            raise ValueError(f"kv_allocation must be 'lru' or 'contiguous', got {self.kv_allocation!r}")
        if self.admission not in ("watermark", "whole"):
            raise ValueError(f"admission must be 'watermark' or 'whole', got {self.admission!r}")

    @property
    def max_seq_len(self) -> int:
        """The longest sequence that can run: the context, or the whole KV cache if smaller."""
        return min(self.max_model_len, self.num_blocks * self.block_size)
