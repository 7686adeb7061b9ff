"""The token budget that keeps a step within a TBT target (Sarathi-Serve's budget choice).

Sarathi-Serve picks `max_num_batched_tokens` by profiling: the largest budget whose hybrid
batch (ongoing decodes plus one prefill chunk filling the rest of the budget) still finishes
within the TBT SLO. Here the cost model plays the profiler. The worst case priced is
`num_decodes` decodes each reading `context_tokens` of KV, plus a prefill chunk of the rest of
the budget appended after `context_tokens` of its own prompt. Step time grows with the budget,
so the largest fitting budget is found by bisection, in multiples of `BUDGET_ALIGN_TOKENS`
(Sarathi-Serve aligns chunks to the matmul tile size).
"""

from __future__ import annotations

from shunter.core.types import StepShape
from shunter.errors import ConfigError
from shunter.sim.cost.interface import CostModel

__all__ = ["BUDGET_ALIGN_TOKENS", "budget_for_tbt", "hybrid_step_time_s"]

BUDGET_ALIGN_TOKENS = 32
DEFAULT_NUM_DECODES = 32
DEFAULT_CONTEXT_TOKENS = 2048
MAX_BUDGET_TOKENS = 1 << 16


def hybrid_step_time_s(cost_model: CostModel, budget_tokens: int, *,
                       num_decodes: int = DEFAULT_NUM_DECODES,
                       context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> float:
    """Time of the worst-case step a budget allows (see the module docstring)."""
    chunk = budget_tokens - num_decodes
    chunks = ((chunk, context_tokens),) if chunk > 0 else ()
    return cost_model.step_time_s(StepShape(prefill_chunks=chunks, num_decode_requests=num_decodes,
                                            num_decode_context_tokens=num_decodes * context_tokens))


def budget_for_tbt(cost_model: CostModel, tbt_slo_s: float, *,
                   num_decodes: int = DEFAULT_NUM_DECODES,
                   context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> int:
    """The largest aligned token budget whose worst-case step takes at most `tbt_slo_s`."""
    def fits(budget: int) -> bool:
        return hybrid_step_time_s(cost_model, budget, num_decodes=num_decodes,
                                  context_tokens=context_tokens) <= tbt_slo_s

    lo = max(BUDGET_ALIGN_TOKENS, -(-(num_decodes + 1) // BUDGET_ALIGN_TOKENS) * BUDGET_ALIGN_TOKENS)
    if not fits(lo):
        decode_s = hybrid_step_time_s(cost_model, num_decodes, num_decodes=num_decodes,
                                      context_tokens=context_tokens)
        raise ConfigError(f"TBT target {tbt_slo_s} s is out of reach: {num_decodes} decodes "
                          f"at {context_tokens} tokens of context alone take {decode_s:.4f} s")
    hi = MAX_BUDGET_TOKENS
    if fits(hi):
        return hi
    while hi - lo > BUDGET_ALIGN_TOKENS:  # fits(lo), not fits(hi), both aligned
        mid = (lo + hi) // 2 // BUDGET_ALIGN_TOKENS * BUDGET_ALIGN_TOKENS
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
