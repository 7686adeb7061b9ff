"""Sarathi-Serve (Agrawal et al., OSDI'24): stall-free chunked prefill under a token budget
chosen from a TBT (time-between-tokens) target.

The batching itself is the core scheduler's chunked-prefill mode (decodes first, then
in-progress prompts, then new ones, chunked into the leftover budget); the order is FCFS, as in
Sarathi-Serve. What this policy adds is the target: `tbt_slo_s`. The token budget is a
`SchedulerConfig` value and choosing it needs a cost model, which the core does not have, so
the runtime derives it: the simulator's runner sets `max_num_batched_tokens` to the largest
budget whose worst-case hybrid step (a full batch of decodes reading the whole KV cache, plus
the chunk) stays within `tbt_slo_s` (`shunter.sim.budget.budget_for_tbt`); the engine would
profile the same thing on its GPU.
An explicit `max_num_batched_tokens` in the scenario wins over the derived one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from shunter.core.sched.policies.fcfs import FcfsPolicy
from shunter.core.types import check_number

__all__ = ["SarathiPolicy"]


@dataclass(slots=True)
class SarathiPolicy(FcfsPolicy):
    tbt_slo_s: float = 0.1
    name: str = "sarathi"
    requires_engine: ClassVar[str | None] = (
        "its point is the engine's token budget per step (stall-free chunked prefill); the "
        "gateway has no steps")

    def __post_init__(self) -> None:
        check_number("tbt_slo_s", self.tbt_slo_s, gt=0)
