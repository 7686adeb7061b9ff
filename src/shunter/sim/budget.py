"""The token budget that keeps a step within a TBT target (Sarathi-Serve's budget choice).

Sarathi-Serve picks `max_num_batched_tokens` by profiling: the largest budget whose hybrid
batch (ongoing decodes plus one prefill chunk filling the rest of the budget) still finishes
within the TBT SLO. Here the cost model plays the profiler, on the worst step the replica can
meet: `num_decodes` decodes (the batch limit) reading `decode_context_tokens` of KV between them
(at most the whole KV cache), plus a prefill chunk of the rest of the budget appended after
`prefill_context_tokens` of its own prompt. Step time grows with the budget, so the largest
fitting budget is found by bisection, in multiples of `BUDGET_ALIGN_TOKENS` (Sarathi-Serve
aligns chunks to the matmul tile size).
"""

from __future__ import annotations

from shunter.core.types import StepShape
from shunter.errors import ConfigError
from shunter.sim.cost.interface import CostModel

__all__ = ["BUDGET_ALIGN_TOKENS", "DEFAULT_PREFILL_CONTEXT_TOKENS", "budget_for_tbt",
           "hybrid_step_time_s"]

BUDGET_ALIGN_TOKENS = 32
DEFAULT_PREFILL_CONTEXT_TOKENS = 4096
MAX_BUDGET_TOKENS = 1 << 16


def hybrid_step_time_s(cost_model: CostModel, budget_tokens: int, *, num_decodes: int,
                       decode_context_tokens: int,
                       prefill_context_tokens: int = DEFAULT_PREFILL_CONTEXT_TOKENS) -> float:
    """Time of the worst-case step a budget allows (see the module docstring)."""
    chunk = budget_tokens - num_decodes
    chunks = ((chunk, prefill_context_tokens),) if chunk > 0 else ()
    return cost_model.step_time_s(StepShape(prefill_chunks=chunks, num_decode_requests=num_decodes,
                                            num_decode_context_tokens=decode_context_tokens))


def budget_for_tbt(cost_model: CostModel, tbt_slo_s: float, *, num_decodes: int,
                   decode_context_tokens: int,
                   prefill_context_tokens: int = DEFAULT_PREFILL_CONTEXT_TOKENS) -> int:
    """The largest aligned token budget whose worst-case step takes at most `tbt_slo_s`."""
    def step_s(budget: int) -> float:
        return hybrid_step_time_s(cost_model, budget, num_decodes=num_decodes,
                                  decode_context_tokens=decode_context_tokens,
                                  prefill_context_tokens=prefill_context_tokens)

    lo = -(-(num_decodes + 1) // BUDGET_ALIGN_TOKENS) * BUDGET_ALIGN_TOKENS
    if step_s(lo) > tbt_slo_s:
        raise ConfigError(f"TBT target {tbt_slo_s} s is out of reach: {num_decodes} decodes "
                          f"reading {decode_context_tokens} KV tokens already take "
                          f"{step_s(num_decodes):.4f} s")
    hi = MAX_BUDGET_TOKENS
    if step_s(hi) <= tbt_slo_s:
        return hi
    while hi - lo > BUDGET_ALIGN_TOKENS:  # lo fits, hi does not, both aligned
        mid = (lo + hi) // 2 // BUDGET_ALIGN_TOKENS * BUDGET_ALIGN_TOKENS
        lo, hi = (mid, hi) if step_s(mid) <= tbt_slo_s else (lo, mid)
    return lo
