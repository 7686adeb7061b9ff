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


# ---- every policy, through each runtime's own front door --------------------------------------

POLICY_PARAMS: dict[str, dict] = {
    "aios_rr": {"time_slice_tokens": 3},
    "dlpm": {"quantum": 48.0},
    "fastswitch": {"quantum_tokens": 12.0},
    "mlfq": {"base_quantum_tokens": 2, "prompt_quantum_tokens": 8},
    "plas": {"first_level_service": 24.0},
    "vtc": {"tenant_weights": {"b": 2.0}},
}
PREDICTOR_WEIGHTS = {"bias": 0.3, "log_prompt": 0.8, "turn": 0.5}  # a fixed learned model


class _Recorder:
    """An executor seen through: logs each step's decisions, advances the clock a fixed step."""

    def __init__(self, executor, clock: ManualClock, log: list) -> None:
        self.executor, self.clock, self.log = executor, clock, log

    def execute(self, out):
        self.log.append((tuple((c.request_id, c.num_computed_tokens, c.num_scheduled_tokens,
                                c.is_sampling) for c in out.chunks),
                         out.preempted_ids, len(out.swap_out), len(out.swap_in),
                         tuple(n.request_id for n in out.new_requests)))
        return self.executor.execute(out)

    def __getattr__(self, name):
        return getattr(self.executor, name)


def mixed_workload(seed: int) -> list[RequestSpec]:
    """Tenants, priorities, programs, sessions and shared prompt prefixes, all arriving at 0."""
    rng = random.Random(seed)
    shared = [rng.randrange(3, 256) for _ in range(8)]  # two blocks some prompts share
    specs = []
    for i in range(12):
        tail = [rng.randrange(3, 256) for _ in range(rng.randint(1, 22))]
        prompt = (shared + tail) if i % 3 == 0 else tail
        num_out = rng.randint(1, 14)
        specs.append(RequestSpec(
            request_id=f"r{i}", arrival_s=0.0, num_prompt_tokens=len(prompt),
            num_output_tokens=num_out, max_output_tokens=num_out, tenant="ab"[i % 2],
            priority=i % 3 // 2, program_id=f"p{i % 4}", session_id=f"s{i % 5}",
            prompt_token_ids=tuple(prompt)))
    return specs


def engine_decisions(loaded, policy: str, specs, config) -> list[tuple]:
    """Through LLMEngine: its add_request (prediction included) and its step loop."""
    from shunter.core.predict import LearnedPredictor
    from shunter.engine.config import EngineConfig
    from shunter.engine.llm import LLMEngine
    clock = ManualClock()
    engine = LLMEngine(EngineConfig.of(
        dtype="float32", num_blocks=config.num_blocks, block_size=BLOCK_SIZE,
        max_num_batched_tokens=config.max_num_batched_tokens, max_num_seqs=config.max_num_seqs,
        max_model_len=config.max_model_len, preemption_mode=config.preemption_mode,
        num_host_blocks=config.num_host_blocks, policy=policy,
        policy_params=POLICY_PARAMS.get(policy, {})),
        loaded=loaded, clock=clock, predictor=LearnedPredictor(weights=PREDICTOR_WEIGHTS))
    log: list = []
    engine.executor = _Recorder(engine.executor, clock, log)
    for spec in specs:
        engine.add_request(list(spec.prompt_token_ids), SamplingParams(
            temperature=0.0, max_tokens=spec.num_output_tokens, ignore_eos=True),
            request_id=spec.request_id, tenant=spec.tenant, priority=spec.priority,
            program_id=spec.program_id, session_id=spec.session_id)
    for _ in range(3000):
        if not engine.has_unfinished_requests:
            break
        engine.step()
        clock.advance_to(clock.now() + 0.01)
    assert not engine.has_unfinished_requests
    return log


def sim_decisions(policy: str, specs, config) -> list[tuple]:
    """Through the simulator: the cluster's arrival prediction and a replica stepping."""
    from shunter.core.predict import ArrivalPredictor, LearnedPredictor
    from shunter.sim.replica import SimReplica
    clock = ManualClock()
    scheduler = CoreScheduler(config, make_policy(policy, **POLICY_PARAMS.get(policy, {})), clock)
    log: list = []
    executor = _Recorder(SimExecutor(RooflineCostModel("smollm2-135m", "a100-80gb")), clock, log)
    replica = SimReplica(0, scheduler, executor, clock, fast_forward=False)
    predictor = ArrivalPredictor(LearnedPredictor(weights=PREDICTOR_WEIGHTS))
    for spec in specs:
        assert replica.add(spec, predicted_output_tokens=predictor.predict(spec)) is None
    while scheduler.has_work:
        end_s = replica.start_step()
        clock.advance_to(end_s)
        replica.finish_step()
    return log


@pytest.mark.parametrize("policy", sorted(
    __import__("shunter.core.sched.registry", fromlist=["POLICIES"]).POLICIES))
@pytest.mark.parametrize("num_blocks, mode", [(64, "recompute"), (16, "recompute"), (16, "swap")])
def test_every_policy_decides_identically_in_the_engine_and_the_simulator(
        tiny_loaded, policy, num_blocks, mode):
    config = SchedulerConfig(num_blocks=num_blocks, block_size=BLOCK_SIZE, max_num_seqs=6,
                             max_num_batched_tokens=16, max_model_len=128, preemption_mode=mode,
                             num_host_blocks=64 if mode == "swap" else 0)
    specs = mixed_workload(seed=num_blocks)
    engine_log = engine_decisions(tiny_loaded, policy, specs, config)
    assert engine_log == sim_decisions(policy, specs, config)
    if num_blocks == 16:
        assert any(step[1] or step[2] for step in engine_log)  # preemption really happens
