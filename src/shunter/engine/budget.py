"""The engine's token budget from a TBT target, measured on its own model (Sarathi-Serve
profiles its GPU for this; `shunter.core.sched.budget` has the rule, the simulator prices the
same steps with a cost model).

The worst step a budget allows is timed as one forward pass of the real model over synthetic
inputs: `max_num_seqs` decodes whose contexts fill the whole KV cache, plus a prefill chunk of
the rest of the budget after `DEFAULT_PREFILL_CONTEXT_TOKENS` (capped by the context) of its
own prompt. The KV it reads holds whatever the cache holds (zeros at start-up): attention
costs the same whatever the values. Budgets are doubled from the smallest until one misses
the target, then searched between the last two (`largest_budget_within`, to `RESOLUTION`);
each is timed as the best of `REPEATS` passes, or by one that took `CLEAR_MISS` times the
target.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shunter.core.sched.budget import (
    DEFAULT_PREFILL_CONTEXT_TOKENS,
    BudgetOutOfReach,
    largest_budget_within,
    smallest_budget,
)
from shunter.engine.model_runner import ChunkInput, ModelRunner
from shunter.errors import ConfigError

__all__ = ["measure_budget_for_tbt", "worst_step_s"]

REPEATS = 2
# a pass this many times the target: the budget misses, whatever the next pass says (a pass
# slowed that much by a loaded machine costs at most a smaller budget, never a missed target)
CLEAR_MISS = 1.5
# the search ends once a fit and a miss are within 5% of the fit: the same budget's worst step
# varies by about as much from run to run here, so the last aligned steps are noise
RESOLUTION = 0.05
_FILL_TOKEN_ID = 100  # any ordinary token: the values do not change the time


def _blocks(num_tokens: int, first: int, block_size: int, num_blocks: int) -> list[int]:
    return [(first + j) % num_blocks for j in range(-(-num_tokens // block_size))]


def worst_step_s(runner: ModelRunner, budget: int, *, num_decodes: int, max_seq_len: int,
                 timer: Callable[[], float] = time.perf_counter,
                 clear_miss_s: float = float("inf")) -> float:
    """The best of `REPEATS` timed forward passes of the worst step `budget` allows; a pass
    slower than `clear_miss_s` ends the timing (a budget that far over its target would not
    come under it on the next pass: that pass is the search's most expensive one)."""
    size, total = runner.block_size, runner.num_blocks
    context = max(1, total * size // max(num_decodes, 1) - 1)
    context = min(context, max_seq_len - 1)
    chunks = [ChunkInput(f"decode-{i}", [_FILL_TOKEN_ID], context,
                         _blocks(context + 1, i * -(-(context + 1) // size), size, total), True)
              for i in range(num_decodes)]
    chunk = budget - num_decodes
    if chunk > 0:
        start = max(0, min(DEFAULT_PREFILL_CONTEXT_TOKENS, max_seq_len - chunk))
        chunks.append(ChunkInput("prefill", [_FILL_TOKEN_ID] * chunk, start,
                                 _blocks(start + chunk, 0, size, total), True))
    best = float("inf")
    for _ in range(REPEATS):
        begin = timer()
        runner.execute(chunks)
        best = min(best, timer() - begin)
        if best > clear_miss_s:
            break
    return best


def measure_budget_for_tbt(runner: ModelRunner, tbt_slo_s: float, *, num_decodes: int,
                           max_seq_len: int,
                           timer: Callable[[], float] = time.perf_counter) -> int:
    """The largest aligned budget whose worst step on this model meets `tbt_slo_s`;
    ConfigError (with the smallest reachable target) if none does."""
    times: dict[int, float] = {}

    def step_s(budget: int) -> float:
        if budget not in times:
            times[budget] = worst_step_s(runner, budget, num_decodes=num_decodes,
                                         max_seq_len=max_seq_len, timer=timer,
                                         clear_miss_s=CLEAR_MISS * tbt_slo_s)
        return times[budget]

    smallest = max_budget = smallest_budget(num_decodes)
    while max_budget < max_seq_len and step_s(max_budget) <= tbt_slo_s:
        max_budget *= 2  # stop at the first budget that misses: search below it
    try:
        return largest_budget_within(step_s, tbt_slo_s, num_decodes=num_decodes,
                                     max_budget=min(max_budget, max_seq_len),
                                     fits=max_budget // 2 if max_budget > smallest else None,
                                     resolution=RESOLUTION)
    except BudgetOutOfReach as exc:
        raise ConfigError(
            f"sarathi: TBT target {tbt_slo_s} s is out of reach on this engine: {num_decodes} "
            f"decodes over a full KV cache already take {exc.smallest_step_s:.3f} s per step; "
            f"set tbt_slo_s to at least {exc.smallest_step_s * 1.2:.2f} (policy params, e.g. "
            f"--policy-params '{{\"tbt_slo_s\": {exc.smallest_step_s * 1.2:.2f}}}') or lower "
            "max_num_seqs") from None
