"""The largest token budget per step whose worst step meets a TBT target (Sarathi-Serve's
budget choice), over any measure of step time: a cost model (the simulator,
`shunter.sim.budget`) or timed forward passes of the real model (the engine,
`shunter.engine.budget`). Budgets are multiples of `BUDGET_ALIGN_TOKENS` (Sarathi-Serve aligns
chunks to the matmul tile size); step time grows with the budget, so a search of the range
finds it.
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
                          num_decodes: int, max_budget: int, fits: int | None = None,
                          resolution: float = 0.0) -> int:
    """The largest aligned budget b <= `max_budget` with `step_s(b) <= tbt_slo_s`, where
    `step_s(b)` is the time of the worst step budget b allows; BudgetOutOfReach if none.
    `fits`: an aligned budget already known to meet the target, searched from.
    `resolution`: stop once a budget that fits and one that misses are within this fraction of
    the one that fits, and answer that one (a measured search, whose times vary from run to run
    by about as much, need not chase the last aligned step).

    Step time grows with the budget, close to linearly: each probe goes where the line
    through the bounds' times meets the target (one aligned step above it after a probe that
    fit, to catch the answer from above), or halfway when the last two probes did not halve
    the interval (so at worst about three times bisection's probes). For step times that
    never fall as the budget grows, the answer is bisection's; a measured search (the engine
    times each probe on its model) takes a few probes where halving took log2 of the range."""
    lo = smallest_budget(num_decodes)
    lo_s = step_s(lo)
    if lo_s > tbt_slo_s:
        raise BudgetOutOfReach(tbt_slo_s, lo_s)
    if fits is not None and lo < fits < max_budget:
        lo, lo_s = fits, step_s(fits)
        assert lo_s <= tbt_slo_s and lo % BUDGET_ALIGN_TOKENS == 0, f"budget {fits} does not fit"
    hi = max_budget
    hi_s = step_s(hi)
    if hi_s <= tbt_slo_s:
        return hi
    halve = raised = False
    last_width = 2 * (hi - lo)  # the interval before the last probe
    while hi - lo > max(BUDGET_ALIGN_TOKENS, resolution * lo):  # lo fits, hi misses; aligned
        width = hi - lo
        if halve or hi_s <= lo_s:
            mid = lo + width // 2
        else:  # where the line meets the target; a step above it once lo has risen there
            mid = lo + int(width * (tbt_slo_s - lo_s) / (hi_s - lo_s)) + raised * BUDGET_ALIGN_TOKENS
        mid = min(max(mid // BUDGET_ALIGN_TOKENS * BUDGET_ALIGN_TOKENS, lo + BUDGET_ALIGN_TOKENS),
                  hi - BUDGET_ALIGN_TOKENS)
        mid_s = step_s(mid)
        raised = mid_s <= tbt_slo_s
        if raised:
            lo, lo_s = mid, mid_s
        else:
            hi, hi_s = mid, mid_s
        halve = 2 * (hi - lo) > last_width  # two probes did not halve it: the next one does
        last_width = width
    return lo
