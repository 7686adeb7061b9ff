"""Sarathi's token budget inside vLLM: fitted to measured step times, chosen by the core's rule."""

from __future__ import annotations

import pytest

from shunter.core.sched.budget import BUDGET_ALIGN_TOKENS, largest_budget_within
from shunter.integrations.step_budget import TbtBudget, fit_nonnegative, num_attended


def test_attended_pairs_of_decodes_and_prefill_chunks() -> None:
    assert num_attended([(1, 99)]) == 100  # a decode reads its 99 + itself
    assert num_attended([(4, 0)]) == 1 + 2 + 3 + 4  # causal prefill
    assert num_attended([(2, 10), (1, 5)]) == (10 + 1) + (10 + 2) + 6


def test_the_fit_recovers_a_linear_cost_and_keeps_coefficients_non_negative() -> None:
    rows = [[1.0, n, p] for n, p in [(1, 10), (50, 2000), (200, 30000), (7, 100), (120, 9000)]]
    targets = [0.003 + 0.0002 * r[1] + 1e-7 * r[2] for r in rows]
    a, b, c = fit_nonnegative(rows, targets)
    assert a == pytest.approx(0.003) and b == pytest.approx(0.0002) and c == pytest.approx(1e-7)
    # time falling with tokens would be a negative coefficient: dropped instead
    falling = fit_nonnegative([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]], [3.0, 2.0, 1.0])
    assert min(falling) >= 0 and falling[1] == 0


def _budget(**kwargs: object) -> TbtBudget:
    settings: dict[str, object] = dict(tbt_slo_s=0.05, max_budget=2048, num_decodes=4,
                                       max_seq_len=1024, num_kv_tokens=8192, min_samples=8,
                                       refit_every=8)
    settings.update(kwargs)
    return TbtBudget(**settings)  # type: ignore[arg-type]


def _feed(budget: TbtBudget, cost: object, steps: int) -> None:
    for i in range(steps):
        chunks = [(1, 100 + i)] * 3 + [(16 * (i % 5 + 1), 0)]
        budget.observe(chunks, cost(chunks))  # type: ignore[operator]


def test_no_budget_until_enough_different_steps_were_timed() -> None:
    budget = _budget()
    for _ in range(20):
        budget.observe([(1, 50)], 0.01)  # one token count only
    assert budget.budget is None
    budget.observe([], 0.01)  # an empty step is not a sample
    assert budget.budget is None


def test_the_budget_is_the_cores_rule_over_the_fitted_step_time() -> None:
    def cost(chunks: list[tuple[int, int]]) -> float:
        return 0.004 + 0.0001 * sum(n for n, _ in chunks)

    budget = _budget()
    _feed(budget, cost, 16)
    expected = largest_budget_within(lambda b: 0.004 + 0.0001 * b, 0.05, num_decodes=4,
                                     max_budget=1024)
    assert budget.budget == expected == 448  # (0.05 - 0.004) / 0.0001 = 460, aligned down
    assert budget.budget % BUDGET_ALIGN_TOKENS == 0 and not budget.is_out_of_reach
    assert budget.worst_step_s(budget.budget) <= 0.05


def test_attention_cost_of_the_worst_step_counts() -> None:
    """The worst step's decodes read the whole KV cache: with an attention cost, the budget
    shrinks as the cache grows."""
    def cost(chunks: list[tuple[int, int]]) -> float:
        return 0.002 + 0.0001 * sum(n for n, _ in chunks) + 1e-8 * num_attended(chunks)

    small, large = _budget(num_kv_tokens=512), _budget(num_kv_tokens=16384)
    for budget in (small, large):
        _feed(budget, cost, 24)
    assert small.coefficients[2] == pytest.approx(1e-8)
    assert large.worst_step_s(64) > small.worst_step_s(64)
    assert large.budget is not None and small.budget is not None
    assert large.budget <= small.budget


def test_an_unreachable_target_gives_the_smallest_budget_and_says_so() -> None:
    budget = _budget(tbt_slo_s=0.001)
    _feed(budget, lambda chunks: 0.01 + 0.001 * sum(n for n, _ in chunks), 16)
    assert budget.is_out_of_reach and budget.budget == BUDGET_ALIGN_TOKENS


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="tbt_slo_s must be > 0"):
        _budget(tbt_slo_s=0)
    with pytest.raises(ValueError, match="num_decodes must be >= 1"):
        _budget(num_decodes=0)
