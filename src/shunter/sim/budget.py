"""The token budget that keeps a simulated step within a TBT target (Sarathi-Serve's budget
choice, `shunter.core.sched.budget`), with the cost model playing the profiler: the worst step
the replica can meet is `num_decodes` decodes (the batch limit) reading `decode_context_tokens`
of KV between them (at most the whole KV cache), plus a prefill chunk of the rest of the budget
appended after `prefill_context_tokens` of its own prompt.
"""

from __future__ import annotations

from shunter.core.sched.budget import (
    DEFAULT_PREFILL_CONTEXT_TOKENS,
    BudgetOutOfReach,
    largest_budget_within,
)
from shunter.core.types import StepShape
from shunter.errors import ConfigError
from shunter.sim.cost.interface import CostModel

__all__ = ["budget_for_tbt", "hybrid_step_time_s"]

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

    try:
        return largest_budget_within(step_s, tbt_slo_s, num_decodes=num_decodes,
                                     max_budget=MAX_BUDGET_TOKENS)
    except BudgetOutOfReach:
        raise ConfigError(f"TBT target {tbt_slo_s} s is out of reach: {num_decodes} decodes "
                          f"reading {decode_context_tokens} KV tokens already take "
                          f"{step_s(num_decodes):.4f} s") from None
