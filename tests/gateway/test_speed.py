"""Measured backend speeds: the pool times a scripted backend on a manual clock, and the views
carry what it measured (`shunter.gateway.speed`)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest
from tests.gateway.factories import MODEL, ManualClock, make_app, run

from shunter.backend.protocol import BackendLoad, GenerateChunk, GenerateRequest, Usage
from shunter.gateway.pool import Attempt, ReplicaPool
from shunter.gateway.speed import MIN_SAMPLES, ForgettingLine, SpeedMeter

FIXED_S = 0.02
PREFILL_TOKENS_PER_S = 2000.0
GAP_S = 0.03


@dataclass(slots=True)
class ScriptedBackend:
    """A backend on a manual clock: TTFT = FIXED_S + uncached / PREFILL_TOKENS_PER_S after it
    starts a request, then a chunk every `tokens_per_chunk` x GAP_S (each +-`jitter`). It runs
    one request at a time (max_num_seqs 1): the others queue inside it. The prompt is
    "<prompt tokens> <cached tokens>"."""

    clock: ManualClock
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    jitter: float = 0.0
    num_output_tokens: int = 40
    tokens_per_chunk: int = 1
    has_usage: bool = True
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _wait(self, seconds: float) -> None:
        self.clock.now_s += seconds * (1.0 + self.rng.uniform(-self.jitter, self.jitter))

    def unsupported(self, request: GenerateRequest):
        return None

    async def submit(self, request: GenerateRequest):
        num_prompt, num_cached = (int(w) for w in (request.prompt or "").split())
        async with self.lock:
            await asyncio.sleep(0)  # let other requests be dispatched meanwhile
            self._wait(FIXED_S + (num_prompt - num_cached) / PREFILL_TOKENS_PER_S)
            n = 0
            while n < self.num_output_tokens:
                if n:
                    self._wait(GAP_S * self.tokens_per_chunk)
                n = min(n + self.tokens_per_chunk, self.num_output_tokens)
                usage = Usage(num_prompt, n) if self.has_usage else None
                yield GenerateChunk(" w" * self.tokens_per_chunk, None, usage, num_cached)
            if not self.has_usage:
                yield GenerateChunk("", "length", Usage(num_prompt, n), num_cached)

    async def abort(self, request_id: str) -> None: ...
    async def load(self) -> BackendLoad | None: return None
    async def health(self) -> bool: return True
    async def close(self) -> None: ...


def scripted_pool(**backend_fields) -> tuple[ReplicaPool, ScriptedBackend, ManualClock]:
    clock = ManualClock()
    app, _ = make_app(1, clock=clock)
    backend = ScriptedBackend(clock, **backend_fields)
    app.pool.replicas[0].client = backend
    return app.pool, backend, clock


async def send(pool: ReplicaPool, num_prompt: int, num_cached: int = 0, rid: str = "r") -> None:
    request = GenerateRequest(request_id=rid, model=MODEL, prompt=f"{num_prompt} {num_cached}",
                              max_tokens=1000)
    async for _ in pool.generate(request, pool.spec(request), Attempt()):
        pass


def speeds(pool: ReplicaPool) -> tuple[float | None, float | None]:
    view = pool.replicas[0].view(pool.clock())
    return view.prefill_tokens_per_s, view.decode_step_s


def test_speeds_are_none_until_enough_samples_then_converge_to_the_backends():
    pool, _, _ = scripted_pool(jitter=0.1)
    rng = random.Random(1)

    async def go() -> None:
        assert speeds(pool) == (None, None)  # the router's defaults apply
        for i in range(60):
            if i == MIN_SAMPLES - 1:
                assert speeds(pool)[0] is None
            num_prompt = rng.randint(50, 4000)
            await send(pool, num_prompt, rng.choice([0, 0, num_prompt // 2]))
    run(go())
    prefill_tps, decode_s = speeds(pool)
    assert prefill_tps == pytest.approx(PREFILL_TOKENS_PER_S, rel=0.03)
    assert decode_s == pytest.approx(GAP_S, rel=0.03)


@pytest.mark.parametrize("tokens_per_chunk, has_usage", [(4, True), (1, False)])
def test_gaps_count_tokens_from_usage_or_chunks(tokens_per_chunk, has_usage):
    pool, _, _ = scripted_pool(tokens_per_chunk=tokens_per_chunk, has_usage=has_usage)

    async def go() -> None:
        for i in range(MIN_SAMPLES * 2):
            await send(pool, 100 + 200 * i)
    run(go())
    prefill_tps, decode_s = speeds(pool)
    assert decode_s == pytest.approx(GAP_S)
    if tokens_per_chunk == 1:
        assert prefill_tps == pytest.approx(PREFILL_TOKENS_PER_S)
    else:  # the first chunk came a few tokens late: no TTFT sample
        assert prefill_tps is None


def test_a_one_piece_answer_is_no_sample_at_all():
    pool, _, _ = scripted_pool(tokens_per_chunk=40)

    async def go() -> None:
        for i in range(MIN_SAMPLES * 2):
            await send(pool, 100 + 200 * i)
    run(go())
    assert speeds(pool) == (None, None)


def test_requests_queued_inside_a_saturated_backend_leave_the_prefill_estimate_alone():
    pool, _, _ = scripted_pool(jitter=0.05)
    rng = random.Random(2)

    async def go() -> None:
        for _ in range(MIN_SAMPLES):  # alone: clean samples
            await send(pool, rng.randint(100, 3000))
        before = pool.replicas[0].meter.prefill.num_samples
        for burst in range(12):  # four at once: three wait behind the first inside the backend
            await asyncio.gather(*(send(pool, rng.randint(100, 3000), rid=f"b{burst}-{k}")
                                   for k in range(4)))
        assert pool.replicas[0].meter.prefill.num_samples == before + 12  # one per burst
    run(go())
    assert speeds(pool)[0] == pytest.approx(PREFILL_TOKENS_PER_S, rel=0.05)


def test_dispatches_behind_a_full_batch_or_other_clients_queue_are_no_ttft_samples():
    app, _ = make_app(1)
    replica = app.pool.replicas[0]
    assert replica.on_dispatch(10, 0.0).is_clean
    replica.on_first_output(10)
    replica.max_num_seqs = 1  # the batch is full: the next waits for a slot
    assert not replica.on_dispatch(10, 0.0).is_clean
    replica.on_done(10, is_started=False)
    replica.max_num_seqs = None
    replica.on_report(BackendLoad(num_waiting=2, num_running=1))  # another client's queue
    assert not replica.on_dispatch(10, 0.0).is_clean


def test_decode_step_follows_the_batch_size_within_the_measured_range():
    meter = SpeedMeter()
    for i in range(200):
        n = 1 + i % 8
        meter.add_decode(n, 0.01 + 0.002 * n, 16)
    assert meter.decode_step_s(4) == pytest.approx(0.018)
    assert meter.decode_step_s(0) == pytest.approx(0.012)  # one request at least
    measured = meter.decode.mean_x + 2 * meter.decode.variance_x ** 0.5
    assert meter.decode_step_s(500) == pytest.approx(0.01 + 0.002 * measured)


def test_forgetting_line_fits_exactly_and_forgets_the_old_regime():
    line = ForgettingLine(forget_samples=16)
    for x in range(1, 50):
        line.add(x, 3.0 + 0.5 * x)
    assert line.slope == pytest.approx(0.5)
    assert line.mean_y - line.slope * line.mean_x == pytest.approx(3.0)
    for i in range(400):
        line.add(1 + i % 50, 1.0 + 2.0 * (1 + i % 50))
    assert line.slope == pytest.approx(2.0, rel=1e-3)
