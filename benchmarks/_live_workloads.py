"""The workloads of `benchmarks/live_vs_sim.py`, sized for a 2-core CPU, and the closed-loop
program replay the bench's open-loop runner does not do.

Every workload is a pure function of its seed. Lengths are in tokens of SmolLM2's tokenizer:
the bench sends `shunter.bench.prompt_text` prompts (one token per word) with ignore_eos and
max_tokens = the output length, so the live servers process exactly these counts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from shunter.bench import EndpointConfig
from shunter.bench.client import send_request
from shunter.bench.runner import new_session
from shunter.core.types import RequestSpec
from shunter.metrics.record import RequestRecord
from shunter.workload import load_workload, retime
from shunter.workload.jsonl import write_jsonl
from shunter.workload.program import ProgramWorkload, followers
from shunter.workload.rank_training import split_by_session
from shunter.workload.staged_program import ProgramShape, TurnPool, staged_programs

__all__ = ["FloodShape", "ScaledShareGpt", "flood", "offline_batch", "program_latencies",
           "programs",
           "replay_programs", "sharegpt_sessions"]

SCALE_DIV = 8  # ShareGPT lengths / 8: a CPU serves ~100 tokens/s, not thousands
MAX_PROMPT_TOKENS = 192
MAX_OUTPUT_TOKENS = 96
MIN_OUTPUT_TOKENS = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class FloodShape:
    duration_s: float = 24.0
    heavy_rate: float = 10.0  # requests/s
    light_rate: float = 2.0  # a fifth of the heavy tenant's
    prompt_tokens: tuple[int, int] = (32, 96)
    output_tokens: tuple[int, int] = (24, 40)


def flood(shape: FloodShape, seed: int = 0) -> list[RequestSpec]:
    """Two tenants with Poisson arrivals, `heavy` at 5x `light`'s rate, past saturation."""
    rng = random.Random(seed)
    specs = []
    for tenant, rate in (("heavy", shape.heavy_rate), ("light", shape.light_rate)):
        t = 0.0
        for i in range(10**6):
            t += rng.expovariate(rate)
            if t >= shape.duration_s:
                break
            specs.append(RequestSpec(
                request_id=f"{tenant}-{i}", arrival_s=t, tenant=tenant,
                num_prompt_tokens=rng.randint(*shape.prompt_tokens),
                num_output_tokens=rng.randint(*shape.output_tokens)))
    return sorted(specs, key=lambda s: (s.arrival_s, s.request_id))


def _scaled(spec: RequestSpec) -> RequestSpec:
    output = min(max(MIN_OUTPUT_TOKENS, spec.num_output_tokens // SCALE_DIV), MAX_OUTPUT_TOKENS)
    return replace(spec, num_prompt_tokens=min(max(8, spec.num_prompt_tokens // SCALE_DIV),
                                               MAX_PROMPT_TOKENS),
                   num_output_tokens=output, max_output_tokens=None, hash_ids=None)


@dataclass(frozen=True, slots=True)
class ScaledShareGpt:
    """Multi-turn ShareGPT, every length / SCALE_DIV, written as a JSONL trace for `shunter
    train-predictor` (which trains on 60% of its sessions, split by `split_by_session` with
    seed 0), and requests of the other 40% (held out), re-timed, to serve."""

    trace_path: Path
    held_out: list[RequestSpec]


def sharegpt_sessions(trace: Path, out_dir: Path, *, num_requests: int, rate: float,
                      seed: int = 0) -> ScaledShareGpt:
    specs = [_scaled(s) for s in load_workload(trace, "sharegpt", num_requests=6000,
                                                zero_tokens="clamp")]
    _, test = split_by_session(specs, 0.6, seed=0)  # train-predictor's split
    out_dir.mkdir(parents=True, exist_ok=True)
    trace_path = out_dir / "sharegpt-scaled.jsonl"
    write_jsonl(specs, trace_path)
    held_out = list(retime(test[:num_requests], rate=rate, seed=seed))
    return ScaledShareGpt(trace_path, held_out)


def offline_batch(specs: Sequence[RequestSpec], *, num_requests: int) -> list[RequestSpec]:
    """The first `num_requests` of `specs`, all sent at t=0 (an offline batch job)."""
    return [replace(s, arrival_s=0.0) for s in specs[:num_requests]]


def programs(trace: Path, *, num_programs: int, rate: float, seed: int = 0) -> ProgramWorkload:
    """Multi-threaded agent programs (Autellix's shape: stages of parallel calls), at most
    4 stages of 4 calls, ShareGPT turn lengths / SCALE_DIV."""
    pool = TurnPool.from_sharegpt(trace)
    pool = TurnPool(np.clip(pool.task_tokens // SCALE_DIV, 8, 96),
                    np.clip(pool.user_tokens // SCALE_DIV, 4, 48),
                    np.clip(pool.output_tokens // SCALE_DIV, MIN_OUTPUT_TOKENS, 64))
    shape = ProgramShape(max_stages=4, max_fan_out=4)
    workload = staged_programs(pool, num_programs=num_programs, rate=rate, shape=shape, seed=seed)
    # the live prompts carry no shared prefix text blocks (prompt_text seeds by hash ids)
    return ProgramWorkload([replace(s, hash_ids=None) for s in workload.first_calls],
                           {k: tuple(replace(f, spec=replace(f.spec, hash_ids=None))
                                     for f in followers(v)) for k, v in workload.follow_ups.items()})


async def _replay(workload: ProgramWorkload, config: EndpointConfig) -> list[RequestRecord]:
    start = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - start

    records: list[RequestRecord] = []
    waiting_on: dict[str, int] = {}
    tasks: set[asyncio.Task[None]] = set()

    async with new_session(config) as session:
        async def call(spec: RequestSpec, delay_s: float) -> None:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            record = await send_request(session, spec, config, clock)
            records.append(record)
            for follow in followers(workload.follow_ups.get(spec.request_id, ())):
                rid = follow.spec.request_id
                left = waiting_on.get(rid, follow.num_dependencies) - 1
                waiting_on[rid] = left
                if left == 0:
                    spawn(follow.spec, follow.delay_s)

        def spawn(spec: RequestSpec, delay_s: float) -> None:
            task = asyncio.get_running_loop().create_task(call(spec, delay_s))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        for spec in workload.first_calls:
            spawn(spec, spec.arrival_s)
        while tasks:
            await asyncio.gather(*list(tasks))
    return records


def replay_programs(workload: ProgramWorkload, config: EndpointConfig) -> list[RequestRecord]:
    """Closed loop: first calls at their times, each later stage when its barrier clears."""
    return asyncio.run(_replay(workload, config))


def program_latencies(records: Sequence[RequestRecord], first_calls: Sequence[RequestSpec],
                      ) -> list[float]:
    """Per program: its last call's finish minus its first call's arrival (as planned; live
    records' arrival clocks start at the replay's start, as the plan's do)."""
    start = {s.program_id: s.arrival_s for s in first_calls}
    end: dict[str, float] = {}
    for r in records:
        if r.finish_s is not None and r.program_id is not None:
            end[r.program_id] = max(end.get(r.program_id, 0.0), r.finish_s)
    return [end[p] - start[p] for p in start if p in end]
