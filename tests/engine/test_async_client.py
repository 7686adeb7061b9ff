"""AsyncEngineClient: concurrent streams equal the synchronous engine; abort; errors; load."""

from __future__ import annotations

import asyncio

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from shunter.core.types import FinishReason  # noqa: E402
from shunter.engine.async_client import AsyncEngineClient  # noqa: E402
from shunter.engine.config import EngineConfig  # noqa: E402
from shunter.engine.llm import LLMEngine  # noqa: E402
from shunter.engine.sampler import SamplingParams  # noqa: E402
from shunter.errors import RequestError  # noqa: E402

PROMPTS = [[5, 6, 7], list(range(20, 37)), [100, 3, 9, 44, 71]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=10)


def make_engine(loaded) -> LLMEngine:
    return LLMEngine(EngineConfig.of(model="tiny", dtype="float32", num_blocks=32, block_size=4,
                                  max_num_batched_tokens=8), loaded=loaded)


def test_concurrent_streams_equal_the_sync_engine(tiny_loaded) -> None:
    expected = [c.token_ids for c in make_engine(tiny_loaded).generate(PROMPTS, GREEDY)]

    async def main() -> list[tuple[int, ...]]:
        async with AsyncEngineClient(make_engine(tiny_loaded)) as client:
            return [c.token_ids for c in await asyncio.gather(
                *(client.generate(p, GREEDY) for p in PROMPTS))]

    assert asyncio.run(main()) == expected


def test_abort_and_early_exit_free_the_request(tiny_loaded) -> None:
    async def main() -> None:
        async with AsyncEngineClient(make_engine(tiny_loaded)) as client:
            long = SamplingParams(temperature=0.0, max_tokens=200)
            rid = await client.submit(PROMPTS[1], long)
            outs = []
            async for out in client.stream(rid):
                outs.append(out)
                if len(outs) == 2:
                    await client.abort(rid)
            assert outs[-1].finish_reason == FinishReason.ABORT
            rid2 = await client.submit(PROMPTS[0], long)
            async for _ in client.stream(rid2):
                break  # the consumer went away: the request is aborted
            await client.generate(PROMPTS[2], GREEDY)  # one more step refreshes the snapshot
            load = client.load()
            assert load.num_running == load.num_waiting == 0
            assert load.num_free_blocks == load.num_total_blocks

    asyncio.run(main())


def test_refused_requests_raise_in_the_caller(tiny_loaded) -> None:
    async def main() -> None:
        async with AsyncEngineClient(make_engine(tiny_loaded)) as client:
            with pytest.raises(RequestError):
                await client.submit([], GREEDY)
            done = await client.generate(PROMPTS[0], GREEDY)
            assert len(done.token_ids) == 10

    asyncio.run(main())
