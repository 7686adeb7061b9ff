"""The executor's decode-run end times equal step-by-step timing bit for bit, on both of its
paths (a Python loop for short runs, numpy for long ones)."""

from __future__ import annotations

import pytest

from shunter.core.types import StepShape
from shunter.sim import executor as executor_module
from shunter.sim.cost.roofline import RooflineCostModel
from shunter.sim.executor import SimExecutor


def step_by_step(cost: RooflineCostModel, start_s: float, n: int, context: int,
                 num_steps: int) -> list[float]:
    ends, now = [], start_s
    for i in range(1, num_steps + 1):
        now = now + cost.step_time_s(StepShape(num_decode_requests=n,
                                               num_decode_context_tokens=context + i * n))
        ends.append(now)
    return ends


@pytest.mark.parametrize("num_steps", [1, 2, executor_module.NUMPY_MIN_STEPS,
                                       executor_module.NUMPY_MIN_STEPS + 1, 700])
def test_decode_run_end_times_equal_step_by_step(num_steps: int) -> None:
    cost = RooflineCostModel("llama-2-70b", "a100", tp=2)
    executor = SimExecutor(cost)
    for start_s, n, context in [(0.0, 1, 0), (12.345678, 7, 9_000), (3e4 + 0.1, 64, 200_003)]:
        got = executor.decode_run_end_times(start_s, n, context, num_steps)
        assert got == step_by_step(cost, start_s, n, context, num_steps)  # exact


def test_both_paths_agree_around_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    cost = RooflineCostModel("llama-3.1-8b", "h100")
    executor = SimExecutor(cost)
    default = executor.decode_run_end_times(1.5, 5, 1234, 300)  # numpy (300 steps)
    monkeypatch.setattr(executor_module, "NUMPY_MIN_STEPS", 0)
    assert executor.decode_run_end_times(1.5, 5, 1234, 300) == default
    monkeypatch.setattr(executor_module, "NUMPY_MIN_STEPS", 10_000)
    assert executor.decode_run_end_times(1.5, 5, 1234, 300) == default


def test_host_tier_stores_do_not_delay_a_step_but_swaps_do() -> None:
    """SchedulerOutput.offload (finished requests' KV stored to the host tier) is copied on
    its own DMA stream while steps go on; a swap is a synchronous copy before the pass."""
    from shunter.core.sched.interface import ScheduledChunk, SchedulerOutput

    cost = RooflineCostModel("llama-3.1-8b", "a100-80gb")
    executor = SimExecutor(cost)
    executor.register("r", 5)
    shape = StepShape(num_decode_requests=1, num_decode_context_tokens=100)
    chunks = (ScheduledChunk("r", 100, 1, (), True),)
    pairs = tuple((i, i) for i in range(200))
    plain = executor.execute(SchedulerOutput(step_id=1, chunks=chunks, shape=shape))
    stored = executor.execute(SchedulerOutput(step_id=2, chunks=chunks, shape=shape,
                                              offload=pairs))
    swapped = executor.execute(SchedulerOutput(step_id=3, chunks=chunks, shape=shape,
                                               swap_out=pairs))
    assert stored.duration_s == plain.duration_s
    assert swapped.duration_s == plain.duration_s + cost.swap_time_s(200, 1)
