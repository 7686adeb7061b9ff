"""Prefill -> decode handoff (TetriInfer's pools): a request prefilled on one engine, its KV
exported and imported into another, decodes there exactly as one engine alone would (token for
token, greedy and seeded), through the sync API and through `HandoffEngineClient`'s streams;
every block is free on both engines afterwards, also after a cancel or a failure at any stage."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from shunter.backend.protocol import BackendError  # noqa: E402
from shunter.core.types import RequestSpec  # noqa: E402
from shunter.engine import disagg  # noqa: E402
from shunter.engine.async_client import AsyncEngineClient  # noqa: E402
from shunter.engine.backend import EngineBackend  # noqa: E402
from shunter.engine.config import EngineConfig  # noqa: E402
from shunter.engine.disagg import HandoffEngineClient  # noqa: E402
from shunter.engine.handoff import (  # noqa: E402
    can_export,
    export_request,
    import_request,
    requeue_request,
)
from shunter.engine.llm import LLMEngine  # noqa: E402
from shunter.engine.sampler import SamplingParams  # noqa: E402

NUM_BLOCKS = 64
# lengths 3..23 over blocks of 4: inside one block, exactly one, across several, several chunks
PROMPTS = [[5, 6, 7], [9, 8, 7, 6], [11, 12, 13, 14, 15], list(range(20, 33)),
           list(range(40, 63))]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


def make_engine(loaded, num_blocks: int = NUM_BLOCKS) -> LLMEngine:
    # a budget of 8 tokens: prompts over 8 tokens are prefilled in chunks
    return LLMEngine(EngineConfig.of(model="tiny", dtype="float32", num_blocks=num_blocks,
                                     block_size=4, max_num_batched_tokens=8), loaded=loaded)


def alone(loaded, prompt: list[int], params: SamplingParams) -> tuple[int, ...]:
    [completion] = make_engine(loaded).generate([prompt], params)
    return completion.token_ids


def through_handoff(prefill: LLMEngine, decode: LLMEngine, prompt: list[int],
                    params: SamplingParams, *, requeue: bool = False) -> tuple[int, ...]:
    rid = prefill.add_request(prompt, params)
    tokens: list[int] = []
    while not tokens:
        for out in prefill.step():
            tokens += out.new_token_ids
            assert not out.is_finished
    assert can_export(prefill, rid)
    handoff = export_request(prefill, rid)
    assert not prefill.has_unfinished_requests
    if requeue:
        requeue_request(decode, handoff)
    else:
        assert import_request(decode, handoff)
    outs = list(decode.run())
    assert outs[-1].num_output_tokens == params.max_tokens  # usage counted across both
    return tuple(tokens + [t for o in outs for t in o.new_token_ids])


def assert_all_free(*engines: LLMEngine) -> None:
    for engine in engines:
        load = engine.load()
        assert load.num_running == load.num_waiting == 0
        assert load.num_free_blocks == load.num_total_blocks


def test_handoff_equals_one_engine_token_for_token(tiny_loaded) -> None:
    prefill, decode = make_engine(tiny_loaded), make_engine(tiny_loaded)
    for prompt in PROMPTS:
        assert through_handoff(prefill, decode, prompt, GREEDY) == \
            alone(tiny_loaded, prompt, GREEDY), prompt
    assert_all_free(prefill, decode)


def test_seeded_sampling_and_recompute_also_equal_one_engine(tiny_loaded) -> None:
    prefill, decode = make_engine(tiny_loaded), make_engine(tiny_loaded)
    seeded = SamplingParams(temperature=0.8, seed=7, max_tokens=10)
    prompt = PROMPTS[3]
    assert through_handoff(prefill, decode, prompt, seeded) == alone(tiny_loaded, prompt, seeded)
    assert through_handoff(prefill, decode, prompt, GREEDY, requeue=True) == \
        alone(tiny_loaded, prompt, GREEDY)
    assert_all_free(prefill, decode)


def test_prefix_cache_hit_on_the_prefill_side_keeps_outputs_exact(tiny_loaded) -> None:
    prefill, decode = make_engine(tiny_loaded), make_engine(tiny_loaded)
    base = PROMPTS[4]
    through_handoff(prefill, decode, base, GREEDY)
    longer = base + [1, 2, 3]
    rid = prefill.add_request(longer, GREEDY)
    first = []
    while not first:
        first = prefill.step()
    assert first[0].num_cached_tokens >= 16  # the detached request's full blocks stayed cached
    assert import_request(decode, export_request(prefill, rid))
    tokens = first[0].new_token_ids + tuple(t for o in decode.run() for t in o.new_token_ids)
    assert tokens == alone(tiny_loaded, longer, GREEDY)
    assert_all_free(prefill, decode)


def test_import_refuses_without_room_and_changes_nothing(tiny_loaded) -> None:
    prefill, decode = make_engine(tiny_loaded), make_engine(tiny_loaded, num_blocks=4)
    rid = prefill.add_request(PROMPTS[4], GREEDY)
    while not prefill.step():
        pass
    handoff = export_request(prefill, rid)
    assert not import_request(decode, handoff)  # 23 tokens need 6 blocks; it has 4
    assert_all_free(prefill, decode)


class FirstChooser:
    """Every request to decode replica `index`; records what it hears."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self.specs: list[RequestSpec] = []
        self.handoffs: list[str] = []
        self.done: list[tuple[str, bool]] = []

    async def choose(self, spec: RequestSpec) -> int:
        self.specs.append(spec)
        return self.index

    def on_handoff(self, request_id: str, seconds: float) -> None:
        assert seconds >= 0
        self.handoffs.append(request_id)

    def on_done(self, request_id: str, *, is_failed: bool) -> None:
        self.done.append((request_id, is_failed))


def run_pools(loaded, body, num_decode: int = 1) -> tuple[list[LLMEngine], FirstChooser]:
    """`body(client)` against a HandoffEngineClient over fresh engines; engines returned."""
    engines = [make_engine(loaded) for _ in range(1 + num_decode)]
    chooser = FirstChooser(num_decode - 1)

    async def main() -> None:
        decode = [EngineBackend(AsyncEngineClient(e), max_num_seqs=8) for e in engines[1:]]
        client = HandoffEngineClient(AsyncEngineClient(engines[0]), decode, chooser)
        client.start()
        try:
            await asyncio.wait_for(body(client), 60)
        finally:
            await client.close()
            for b in decode:
                await b.close()

    asyncio.run(main())
    return engines, chooser


async def collect(client: HandoffEngineClient, prompt: list[int],
                  params: SamplingParams = GREEDY) -> tuple[int, ...]:
    rid = await client.submit(prompt, params)
    return tuple([t async for out in client.stream(rid) for t in out.new_token_ids])


def test_streams_through_the_client_equal_one_engine(tiny_loaded) -> None:
    expected = [alone(tiny_loaded, p, GREEDY) for p in PROMPTS]
    found: list[tuple[int, ...]] = []

    async def body(client: HandoffEngineClient) -> None:
        found.extend(await asyncio.gather(*(collect(client, p) for p in PROMPTS)))

    engines, chooser = run_pools(tiny_loaded, body, num_decode=2)
    assert found == expected
    assert [s.num_prompt_tokens for s in chooser.specs] == [len(p) for p in PROMPTS]
    assert len(chooser.handoffs) == len(PROMPTS) and not any(f for _, f in chooser.done)
    assert_all_free(*engines)


def test_a_request_done_at_its_first_token_never_moves(tiny_loaded) -> None:
    one = SamplingParams(temperature=0.0, max_tokens=1)

    async def body(client: HandoffEngineClient) -> None:
        assert await collect(client, PROMPTS[2], one) == alone(tiny_loaded, PROMPTS[2], one)

    engines, chooser = run_pools(tiny_loaded, body)
    assert chooser.handoffs == [] and len(chooser.done) == 1
    assert_all_free(*engines)


def test_cancel_at_every_stage_frees_both_sides(tiny_loaded) -> None:
    long = SamplingParams(temperature=0.0, max_tokens=40)

    async def body(client: HandoffEngineClient) -> None:
        rid = await client.submit(PROMPTS[4], long)  # cancelled while it prefills
        task = asyncio.create_task(collect_ids(client, rid))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        rid = await client.submit(PROMPTS[3], long)  # left after a few decoded tokens
        async with contextlib.aclosing(client.stream(rid)) as outs:
            async for out in outs:
                if out.num_output_tokens >= 3:
                    break
        await collect(client, PROMPTS[0])  # a step more on each side: stats refreshed

    engines, chooser = run_pools(tiny_loaded, body)
    assert len(chooser.done) == 3
    assert_all_free(*engines)


async def collect_ids(client: HandoffEngineClient, rid: str) -> list[int]:
    return [t async for out in client.stream(rid) for t in out.new_token_ids]


def test_a_failed_import_is_a_backend_error_and_frees_both_sides(tiny_loaded, monkeypatch) -> None:
    def broken(engine, handoff) -> bool:
        raise ValueError("no such cache")

    async def body(client: HandoffEngineClient) -> None:
        monkeypatch.setattr(disagg, "import_request", broken)
        with pytest.raises(BackendError, match="handoff to decode replica 0 failed"):
            await collect(client, PROMPTS[3])
        monkeypatch.undo()
        assert await collect(client, PROMPTS[1]) == alone(tiny_loaded, PROMPTS[1], GREEDY)

    engines, chooser = run_pools(tiny_loaded, body)
    assert [failed for _, failed in chooser.done] == [True, False]
    assert_all_free(*engines)
