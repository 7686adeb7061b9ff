"""Admission headroom: how many KV blocks must stay free when a waiting request is admitted.

"watermark" admission keeps a fraction of the blocks free; "whole" admission also reserves,
for every running request, the blocks it may still grow into (up to its max output, capped by
the context), so admitted requests never preempt each other. Nothing is reserved when nothing
runs: a request that fits the cache at all can then always start.
"""

from __future__ import annotations

from collections.abc import Sequence

from shunter.core.kv.manager import KVCacheManager
from shunter.core.request import Request
from shunter.core.sched.config import SchedulerConfig

__all__ = ["Headroom"]


class Headroom:
    __slots__ = ("config", "kv", "watermark_blocks")

    def __init__(self, config: SchedulerConfig, kv: KVCacheManager) -> None:
        self.config = config
        self.kv = kv
        self.watermark_blocks = int(config.watermark * config.num_blocks)

    def fits(self, request: Request, num_running: int) -> bool:
        """Whether the request's next chunk fits now with the watermark kept (no preemption)."""
        num_new = min(request.num_uncomputed_tokens, self.config.max_num_batched_tokens)
        need = self.kv.num_blocks_for(request.num_computed_tokens + num_new) - len(request.block_ids)
        return (num_running < self.config.max_num_seqs
                and need + self.watermark_blocks <= self.kv.num_free_blocks)

    def reserve_for(self, request: Request, reserved: int, num_running: int) -> int:
        """Blocks that must stay free after admitting `request`, given `reserved` for running."""
        if not num_running:
            return 0
        if self.config.admission == "whole":
            return self.watermark_blocks + reserved + self.whole_reservation(request)
        return self.watermark_blocks

    def whole_reservation(self, request: Request) -> int:
        """Blocks a request may still grow by (0 unless admission is "whole")."""
        if self.config.admission != "whole":
            return 0
        limit = self.config.max_seq_len
        if request.max_output_tokens is not None:
            limit = min(limit, request.num_prompt_tokens + request.max_output_tokens)
        held = max(len(request.block_ids), self.kv.num_blocks_for(request.num_tokens))
        return max(self.kv.num_blocks_for(limit) - held, 0)

    def reserved_blocks(self, running: Sequence[Request]) -> int:
        if self.config.admission != "whole":
            return 0
        return sum(self.whole_reservation(r) for r in running)
