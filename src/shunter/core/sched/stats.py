"""A scheduler's load, as routers and dashboards see it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SchedulerStats"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerStats:
    num_waiting: int
    num_running: int
    num_waiting_tokens: int  # tokens still to compute, over waiting requests
    num_running_tokens: int  # tokens held by running requests
    num_free_blocks: int
    num_total_blocks: int
    num_preemptions: int

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_total_blocks
