"""The largest token budget per step whose worst step meets a TBT target (Sarathi-Serve's
budget choice), over any measure of step time: a cost model (the simulator,
`shunter.sim.budget`) or timed forward passes of the real model (the engine,
`shunter.engine.budget`). Budgets are multiples of `BUDGET_ALIGN_TOKENS` (Sarathi-Serve aligns
chunks to the matmul tile size); step time grows with the budget, so bisection finds it.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BUDGET_ALIGN_TOKENS", "DEFAULT_PREFILL_CONTEXT_TOKENS", "BudgetOutOfReach",
           "largest_budget_within", "smallest_budget"]

BUDGET_ALIGN_TOKENS = 32
# the worst step's prefill chunk follows this much of its own prompt (its attention reads it)
DEFAULT_PREFILL_CONTEXT_TOKENS = 4096


class BudgetOutOfReach(ValueError):
    """Even the smallest budget's worst step takes longer than the target."""

    def __init__(self, tbt_slo_s: float, smallest_step_s: float) -> None:
        self.tbt_slo_s = tbt_slo_s
        self.smallest_step_s = smallest_step_s
        super().__init__(f"TBT target {tbt_slo_s} s is out of reach (the smallest budget's worst "
                         f"step takes {smallest_step_s:.4f} s)")


def smallest_budget(num_decodes: int) -> int:
    """The smallest aligned budget that leaves room for one prefill token beside the decodes."""
    return -(-(num_decodes + 1) // BUDGET_ALIGN_TOKENS) * BUDGET_ALIGN_TOKENS


def largest_budget_within(step_s: Callable[[int], float], tbt_slo_s: float, *,
                          num_decodes: int, max_budget: int) -> int:
    """The largest aligned budget b <= `max_budget` with `step_s(b) <= tbt_slo_s`, where
    `step_s(b)` is the time of the worst step budget b allows; BudgetOutOfReach if none."""
    lo = smallest_budget(num_decodes)
    lo_s = step_s(lo)
    if lo_s > tbt_slo_s:
        raise BudgetOutOfReach(tbt_slo_s, lo_s)
    hi = max_budget
    if step_s(hi) <= tbt_slo_s:
        return hi
    while hi - lo > BUDGET_ALIGN_TOKENS:  # lo fits, hi does not, both aligned
        mid = (lo + hi) // 2 // BUDGET_ALIGN_TOKENS * BUDGET_ALIGN_TOKENS
        lo, hi = (mid, hi) if step_s(mid) <= tbt_slo_s else (lo, mid)
    return lo
