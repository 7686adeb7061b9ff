"""Steady runs start without a real first step, and still give step-by-step results."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.factories import IS_COMPILED

from shunter.core.sched.scheduler import CoreScheduler
from shunter.core.types import RequestSpec
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate


@pytest.fixture
def num_schedules(monkeypatch):
    if IS_COMPILED:
        pytest.skip("patches a module compiled in this install")
    calls = [0]
    real = CoreScheduler.schedule

    def counting(self):
        calls[0] += 1
        return real(self)

    monkeypatch.setattr(CoreScheduler, "schedule", counting)
    return calls


@pytest.mark.parametrize("chunked", [True, False])
def test_a_lone_request_is_scheduled_for_real_only_for_its_prompt(num_schedules, chunked):
    spec = RequestSpec(request_id="a", arrival_s=0.0, num_prompt_tokens=100, num_output_tokens=50)
    config = SimConfig(scheduler={"enable_chunked_prefill": chunked})
    fast = simulate(config, [spec])
    assert num_schedules[0] == 1  # the prompt; the 49 decode steps are one steady run
    num_schedules[0] = 0
    slow = simulate(replace(config, fast_forward=False), [spec])
    assert num_schedules[0] == 50
    assert list(fast.records[0].token_times_s) == list(slow.records[0].token_times_s)


def test_a_finish_starts_the_next_run_without_a_real_step(num_schedules):
    specs = [RequestSpec(request_id=str(i), arrival_s=0.0, num_prompt_tokens=50,
                         num_output_tokens=n) for i, n in enumerate((10, 20, 30))]
    config = SimConfig(scheduler={"enable_chunked_prefill": False})
    fast = simulate(config, specs)
    # the first prompt runs alone (the others arrive while it is in flight), then one step takes
    # the other two prompts; after that, runs to 10, 20 and 30 tokens, none scheduled for real
    assert num_schedules[0] == 2
    slow = simulate(replace(config, fast_forward=False), specs)
    assert [list(r.token_times_s) for r in fast.records] == [
        list(r.token_times_s) for r in slow.records]
