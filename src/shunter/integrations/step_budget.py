"""A step's token budget from a TBT target, learned from the steps an engine runs.

Sarathi-Serve (the `sarathi` policy) picks the largest token budget whose worst step meets a
time-between-tokens target. The rule is the core's (`shunter.core.sched.budget`); the step time
it needs comes from a cost model in the simulator and from timed forward passes of its own
model in Shunter's engine. Inside vLLM the scheduler cannot run the model, so it times the
steps vLLM runs anyway and fits

    step_s = a + b * num_tokens + c * num_attended

(non-negative a, b, c; `num_attended` = query-key pairs of attention, so a prefill chunk of n
tokens after c computed ones counts n*c + n(n+1)/2 and a decode c+1), over the last `window`
steps. The worst step a budget allows is the engine's (`shunter.engine.budget.worst_step_s`):
`num_decodes` decodes whose contexts fill the KV cache, plus a prefill chunk of the rest after
`DEFAULT_PREFILL_CONTEXT_TOKENS` of its own prompt. No budget is given until `min_samples` steps
with at least two different token counts were seen; it is refitted every `refit_every` steps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

from shunter.core.sched.budget import (
    DEFAULT_PREFILL_CONTEXT_TOKENS,
    BudgetOutOfReach,
    largest_budget_within,
    smallest_budget,
)
from shunter.core.types import check_number

__all__ = ["TbtBudget", "fit_nonnegative", "num_attended"]

_NUM_FEATURES = 3  # 1, num_tokens, num_attended
_SINGULAR = 1e-12


def num_attended(chunks: Sequence[tuple[int, int]]) -> int:
    """Query-key pairs of a step's chunks, each (num_new_tokens, num_computed_tokens_before)."""
    return sum(n * c + n * (n + 1) // 2 for n, c in chunks)


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None if singular."""
    n = len(rhs)
    a = [row[:] + [rhs[i]] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < _SINGULAR:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, n):
            factor = a[r][col] / a[col][col]
            for k in range(col, n + 1):
                a[r][k] -= factor * a[col][k]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (a[r][n] - sum(a[r][k] * x[k] for k in range(r + 1, n))) / a[r][r]
    return x


def fit_nonnegative(rows: Sequence[Sequence[float]], targets: Sequence[float]) -> list[float]:
    """Least squares with every coefficient >= 0 (by trying each subset of the features: there
    are three). Columns are scaled to a maximum of 1 first, so that a column of millions of
    attended pairs does not swamp the intercept's."""
    width = len(rows[0])
    scale = [max(abs(row[j]) for row in rows) or 1.0 for j in range(width)]
    scaled = [[row[j] / scale[j] for j in range(width)] for row in rows]
    best: tuple[float, list[float]] | None = None
    for size in range(width, 0, -1):
        for subset in combinations(range(width), size):
            gram = [[sum(r[i] * r[j] for r in scaled) for j in subset] for i in subset]
            moment = [sum(r[i] * t for r, t in zip(scaled, targets, strict=True)) for i in subset]
            solution = _solve(gram, moment)
            if solution is None or min(solution) < 0:
                continue
            coef = [0.0] * width
            for i, value in zip(subset, solution, strict=True):
                coef[i] = value
            residual = sum((sum(c * x for c, x in zip(coef, r, strict=True)) - t) ** 2
                           for r, t in zip(scaled, targets, strict=True))
            if best is None or residual < best[0]:
                best = (residual, coef)
    coef = best[1] if best is not None else [0.0] * width
    return [c / s for c, s in zip(coef, scale, strict=True)]


@dataclass(slots=True, kw_only=True)
class TbtBudget:
    """The largest budget whose predicted worst step meets `tbt_slo_s` (None until calibrated)."""

    tbt_slo_s: float
    max_budget: int  # the engine's own cap (vLLM's max_num_batched_tokens)
    num_decodes: int  # decodes in the worst step (max_num_seqs)
    max_seq_len: int
    num_kv_tokens: int  # the KV cache's capacity in tokens
    window: int = 512
    min_samples: int = 16
    refit_every: int = 16
    budget: int | None = None
    is_out_of_reach: bool = False  # even the smallest budget's worst step misses the target
    coefficients: tuple[float, ...] = ()
    _samples: deque[tuple[int, int, float]] = field(init=False)
    _num_new: int = 0

    def __post_init__(self) -> None:
        check_number("tbt_slo_s", self.tbt_slo_s, gt=0)
        for name in ("max_budget", "num_decodes", "max_seq_len", "num_kv_tokens", "window",
                     "min_samples", "refit_every"):
            check_number(name, getattr(self, name), ge=1)
        self._samples = deque(maxlen=self.window)

    def observe(self, chunks: Sequence[tuple[int, int]], duration_s: float) -> bool:
        """Record one step's chunks and measured time; True when the budget was refitted."""
        if not chunks or not duration_s > 0:
            return False
        self._samples.append((sum(n for n, _ in chunks), num_attended(chunks), duration_s))
        self._num_new += 1
        if self._num_new < self.refit_every or len(self._samples) < self.min_samples:
            return False
        if len({tokens for tokens, _, _ in self._samples}) < 2:
            return False  # one token count says nothing about how time grows with it
        self._num_new = 0
        self.refit()
        return True

    def refit(self) -> None:
        rows = [[1.0, float(tokens), float(pairs)] for tokens, pairs, _ in self._samples]
        self.coefficients = tuple(fit_nonnegative(rows, [t for _, _, t in self._samples]))
        num_decodes = min(self.num_decodes, self.max_budget - 1)
        try:
            self.budget = largest_budget_within(
                self.worst_step_s, self.tbt_slo_s, num_decodes=max(num_decodes, 0),
                max_budget=min(self.max_budget, self.max_seq_len))
            self.is_out_of_reach = False
        except BudgetOutOfReach:
            self.budget = min(smallest_budget(num_decodes), self.max_budget)
            self.is_out_of_reach = True

    def worst_step_s(self, budget: int) -> float:
        """The predicted time of the worst step `budget` allows (the engine's definition)."""
        return self.predict_s(self._worst_chunks(budget))

    def _worst_chunks(self, budget: int) -> list[tuple[int, int]]:
        num_decodes = min(self.num_decodes, budget)
        context = max(1, self.num_kv_tokens // max(num_decodes, 1) - 1)
        context = min(context, self.max_seq_len - 1)
        chunks = [(1, context)] * num_decodes
        chunk = budget - num_decodes
        if chunk > 0:
            chunks.append((chunk, max(0, min(DEFAULT_PREFILL_CONTEXT_TOKENS,
                                             self.max_seq_len - chunk))))
        return chunks

    def predict_s(self, chunks: Sequence[tuple[int, int]]) -> float:
        """Predicted time of a step of these (num_new_tokens, num_computed_before) chunks."""
        a, b, c = self.coefficients or (0.0,) * _NUM_FEATURES
        return a + b * sum(n for n, _ in chunks) + c * num_attended(chunks)
