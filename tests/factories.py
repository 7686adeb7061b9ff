"""Object factories for tests: no model files, no I/O (vLLM tests/v1/core/utils.py, minus models)."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from shunter.build import is_compiled
from shunter.core.clock import ManualClock
from shunter.core.request import Request
from shunter.core.sched.interface import SchedulerOutput, StepResult
from shunter.core.sched.registry import make_policy
from shunter.core.sched.scheduler import CoreScheduler, SchedulerConfig
from shunter.core.types import RequestSpec

__all__ = ["IS_COMPILED", "FakeExecutor", "add_all", "interpreted_only", "make_request", "make_scheduler",
           "make_spec", "poisson_specs", "run_steps"]

# Tests that spy on the simulator's internals by patching them; a compiled build (setup.py)
# binds those calls at compile time, so the spies see nothing there.
IS_COMPILED = is_compiled()
interpreted_only = pytest.mark.skipif(IS_COMPILED, reason="patches a module compiled in this install")


def make_spec(request_id: str = "r0", *, num_prompt_tokens: int = 16, num_output_tokens: int = 4,
              arrival_s: float = 0.0, **kwargs: object) -> RequestSpec:
    return RequestSpec(request_id=request_id, arrival_s=arrival_s,
                       num_prompt_tokens=num_prompt_tokens, num_output_tokens=num_output_tokens,
                       **kwargs)  # type: ignore[arg-type]


def poisson_specs(n: int, *, seed: int, rate: float,
                  outputs: tuple[int, ...] = (1, 5, 40, 200)) -> list[RequestSpec]:
    """`n` requests with Poisson arrivals and prompt/output lengths drawn from short lists."""
    rng = random.Random(seed)
    t, specs = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        specs.append(RequestSpec(request_id=f"r{i}", arrival_s=t,
                                 num_prompt_tokens=rng.choice([10, 300, 1500, 5000]),
                                 num_output_tokens=rng.choice(outputs)))
    return specs


def make_request(request_id: str = "r0", *, block_size: int = 4, **kwargs: object) -> Request:
    return Request.from_spec(make_spec(request_id, **kwargs), block_size=block_size)  # type: ignore[arg-type]


def make_scheduler(*, num_blocks: int = 64, block_size: int = 4, policy: str = "fcfs",
                   policy_params: dict | None = None, clock: ManualClock | None = None,
                   **config: object) -> CoreScheduler:
    cfg = SchedulerConfig(num_blocks=num_blocks, block_size=block_size, **config)  # type: ignore[arg-type]
    return CoreScheduler(cfg, make_policy(policy, **(policy_params or {})), clock or ManualClock())


class FakeExecutor:
    """Plays the model: token 7 for everyone, and stops a request after its scripted length."""

    def __init__(self, lengths: dict[str, int] | None = None, step_s: float = 1.0) -> None:
        self.lengths = lengths or {}
        self.step_s = step_s
        self.generated: dict[str, int] = {}
        self.outputs: list[SchedulerOutput] = []

    def execute(self, output: SchedulerOutput) -> StepResult:
        self.outputs.append(output)
        sampled: dict[str, int] = {}
        stopped = set()
        for chunk in output.chunks:
            if chunk.is_sampling:
                rid = chunk.request_id
                sampled[rid] = 7
                self.generated[rid] = self.generated.get(rid, 0) + 1
                if self.generated[rid] >= self.lengths.get(rid, 1 << 30):
                    stopped.add(rid)
        return StepResult(self.step_s, sampled, frozenset(stopped))


def run_steps(scheduler: CoreScheduler, executor: FakeExecutor, clock: ManualClock,
              max_steps: int = 10_000) -> list:
    """Step until idle; returns every RequestOutput in order."""
    outputs: list = []
    for _ in range(max_steps):
        if not scheduler.has_work:
            break
        out = scheduler.schedule()
        res = executor.execute(out)
        clock.advance_to(clock.now() + res.duration_s)
        outputs.extend(scheduler.update(out, res))
        scheduler.kv.pool.check_invariants()
    return outputs


def add_all(scheduler: CoreScheduler, requests: Iterable[Request]) -> None:
    for r in requests:
        assert scheduler.add_request(r) is None
