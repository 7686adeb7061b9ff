"""Sarathi's budget measured on an engine (`shunter.engine.budget`), on a fake runner whose
forward pass takes a known time on a fake clock: the answer, and which passes it runs."""

from __future__ import annotations

import pytest

from shunter.engine import budget as engine_budget
from shunter.errors import ConfigError

pytest.importorskip("torch")  # (shunter.engine.model_runner's import)


class FakeRunner:
    """A forward pass over N tokens takes `fixed + per_token * N` seconds, plus `extra[i]` on
    the i-th pass; the clock moves only when it runs."""

    block_size, num_blocks = 16, 512

    def __init__(self, fixed: float, per_token: float, extra: dict[int, float] | None = None):
        self.fixed, self.per_token, self.extra = fixed, per_token, extra or {}
        self.now = 0.0
        self.passes: list[int] = []  # tokens of each pass

    def execute(self, chunks) -> None:
        tokens = sum(len(c.token_ids) for c in chunks)
        self.now += self.fixed + self.per_token * tokens + self.extra.get(len(self.passes), 0.0)
        self.passes.append(tokens)

    def clock(self) -> float:
        return self.now


def test_a_pass_far_over_the_target_is_not_repeated() -> None:
    runner = FakeRunner(0.0, 1e-3, extra={0: 1.0})
    args = {"num_decodes": 4, "max_seq_len": 2048, "timer": runner.clock}
    # the first pass took 1.2 s; the target was 0.5: the second would not bring it under
    assert engine_budget.worst_step_s(runner, 200, clear_miss_s=0.75, **args) == \
        pytest.approx(1.2)
    assert len(runner.passes) == 1
    # no clear miss: the best of REPEATS passes
    assert engine_budget.worst_step_s(runner, 200, **args) == pytest.approx(0.2)
    assert len(runner.passes) == 1 + engine_budget.REPEATS


def test_the_measured_budget_is_the_largest_that_fits_and_misses_run_once() -> None:
    runner = FakeRunner(0.05, 1.6e-3)  # a budget of b tokens: 0.05 + 0.0016 b s
    budget = engine_budget.measure_budget_for_tbt(runner, 1.0, num_decodes=4, max_seq_len=2048,
                                                  timer=runner.clock)
    assert budget == 576  # the largest multiple of 32 with 0.05 + 0.0016 b <= 1.0
    counts: dict[int, int] = {}
    for tokens in runner.passes:
        counts[tokens] = counts.get(tokens, 0) + 1
    clear_misses = {t for t in counts if 0.05 + 1.6e-3 * t > engine_budget.CLEAR_MISS * 1.0}
    assert clear_misses == {1024}  # doubling: 512 fit, 1024 took 1.69 s
    for tokens, count in counts.items():
        assert count == (1 if tokens in clear_misses else engine_budget.REPEATS), (tokens, count)


def test_an_unreachable_target_names_the_smallest_reachable_one() -> None:
    runner = FakeRunner(0.5, 1e-3)
    with pytest.raises(ConfigError, match=r"out of reach.*at least 0\.6"):
        engine_budget.measure_budget_for_tbt(runner, 0.1, num_decodes=4, max_seq_len=2048,
                                             timer=runner.clock)
