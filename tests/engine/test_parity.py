"""Parity: the same workload through the real engine and through the simulator's executor
makes the same scheduling decisions, step for step (STYLE.md section 10).

Both drive the one CoreScheduler. The engine's executor runs a tiny random-weight Llama and
ends requests by max_tokens (ignore_eos); the simulator's executor ends them at the trace's
true output length. Prompts are distinct, so the engine's content hashes and the simulator's
per-request block identities share nothing across requests in either run.
"""

from __future__ import annotations

import random

import pytest
import torch

from shunter.core.clock import ManualClock
from shunter.core.request import Request
from shunter.core.sched.registry import make_policy
from shunter.core.sched.scheduler import CoreScheduler, SchedulerConfig
from shunter.core.types import RequestSpec
from shunter.engine.executor import EngineExecutor
from shunter.engine.model import build_llama
from shunter.engine.model_runner import ModelRunner
from shunter.engine.sampler import SamplingParams
from shunter.sim.cost.roofline import RooflineCostModel
from shunter.sim.executor import SimExecutor

BLOCK_SIZE = 4


def workload(seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(3, 256) for _ in range(rng.randint(1, 30))], rng.randint(1, 12))
            for _ in range(10)]


def decisions(scheduler: CoreScheduler, executor, clock: ManualClock) -> list[tuple]:
    log = []
    for _ in range(2000):
        if not scheduler.has_work:
            break
        out = scheduler.schedule()
        log.append((tuple((c.request_id, c.num_computed_tokens, c.num_scheduled_tokens, c.is_sampling)
                          for c in out.chunks),
                    out.preempted_ids, len(out.swap_out), len(out.swap_in),
                    tuple(n.request_id for n in out.new_requests)))
        result = executor.execute(out)
        clock.advance_to(clock.now() + 0.01)  # decisions must not depend on step durations
        scheduler.update(out, result)
    assert not scheduler.has_work
    return log


def run(config: SchedulerConfig, jobs, *, engine_loaded=None) -> list[tuple]:
    clock = ManualClock()
    scheduler = CoreScheduler(config, make_policy("fcfs"), clock)
    if engine_loaded is not None:
        model = build_llama(engine_loaded.config, engine_loaded.tensors,
                            max_positions=config.max_model_len, dtype=torch.float32, device="cpu")
        executor = EngineExecutor(ModelRunner(model, num_blocks=config.num_blocks,
                                              block_size=BLOCK_SIZE,
                                              num_host_blocks=config.num_host_blocks))
    else:
        executor = SimExecutor(RooflineCostModel("smollm2-135m", "a100-80gb"))
    for i, (prompt, num_out) in enumerate(jobs):
        rid = f"r{i}"
        if engine_loaded is not None:
            executor.register(rid, SamplingParams(temperature=0.0, max_tokens=num_out, ignore_eos=True))
            spec = RequestSpec(request_id=rid, arrival_s=0.0, num_prompt_tokens=len(prompt),
                               num_output_tokens=num_out, max_output_tokens=num_out,
                               prompt_token_ids=tuple(prompt))
        else:
            executor.register(rid, num_out)
            spec = RequestSpec(request_id=rid, arrival_s=0.0, num_prompt_tokens=len(prompt),
                               num_output_tokens=num_out)
        assert scheduler.add_request(Request.from_spec(spec, block_size=BLOCK_SIZE)) is None
    return decisions(scheduler, executor, clock)


@pytest.mark.parametrize("num_blocks, mode, budget", [
    (64, "recompute", 64),   # roomy: chunked prefill and batching only
    (14, "recompute", 16),   # tight: recompute preemptions
    (14, "swap", 16),        # tight: swaps
])
def test_engine_and_simulator_schedule_identically(tiny_loaded, num_blocks, mode, budget):
    config = SchedulerConfig(num_blocks=num_blocks, block_size=BLOCK_SIZE, max_num_seqs=6,
                             max_num_batched_tokens=budget, max_model_len=128,
                             preemption_mode=mode, num_host_blocks=64 if mode == "swap" else 0,
                             watermark=0.0)
    jobs = workload(seed=num_blocks)
    engine_log = run(config, jobs, engine_loaded=tiny_loaded)
    sim_log = run(config, jobs)
    assert engine_log == sim_log
    if num_blocks == 14:  # the tight cases really exercise preemption
        assert any(step[1] or step[2] for step in engine_log)
