"""The fake backends' delays: a whole (non-streamed) answer takes as long as its stream would,
first_token_delay_s + (n - 1) x token_delay_s, in process and over HTTP."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from shunter.backend.protocol import GenerateRequest
from shunter.gateway.fake import FakeEngineClient, FakeModel
from shunter.gateway.fake_server import FakeHttpBackend

NUM_TOKENS = 6
FIRST_S, TOKEN_S = 0.05, 0.04
EXPECTED_S = FIRST_S + (NUM_TOKENS - 1) * TOKEN_S  # 0.25 s


async def _answer_s(client: FakeEngineClient, *, stream: bool) -> float:
    request = GenerateRequest(request_id="r", model="m", prompt="hi", max_tokens=NUM_TOKENS,
                              ignore_eos=True, stream=stream)
    start = time.perf_counter()
    chunks = [chunk async for chunk in client.submit(request)]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == NUM_TOKENS
    return time.perf_counter() - start


def test_the_in_process_fake_delays_a_whole_answer_as_its_stream() -> None:
    client = FakeEngineClient(first_token_delay_s=FIRST_S, token_delay_s=TOKEN_S)
    for stream in (True, False):
        assert EXPECTED_S <= asyncio.run(_answer_s(client, stream=stream)) < EXPECTED_S + 0.5


async def _http_answer_s(backend: FakeHttpBackend, *, stream: bool) -> float:
    port = await backend.start()
    try:
        async with aiohttp.ClientSession() as session:
            start = time.perf_counter()
            async with session.post(f"http://127.0.0.1:{port}/v1/completions", json={
                    "model": "fake-model", "prompt": "hi", "max_tokens": NUM_TOKENS,
                    "ignore_eos": True, "stream": stream}) as response:
                body = await response.read()
            elapsed = time.perf_counter() - start
    finally:
        await backend.stop()
    if not stream:
        assert json.loads(body)["usage"]["completion_tokens"] == NUM_TOKENS
    return elapsed


def test_the_http_fake_delays_a_whole_answer_as_its_stream() -> None:
    for first_s in (FIRST_S, 0.0):  # without a first-token delay too (its fast path)
        expected_s = first_s + (NUM_TOKENS - 1) * TOKEN_S
        for stream in (True, False):
            backend = FakeHttpBackend(model=FakeModel(), first_token_delay_s=first_s,
                                      token_delay_s=TOKEN_S)
            elapsed = asyncio.run(_http_answer_s(backend, stream=stream))
            assert expected_s <= elapsed < expected_s + 0.5, (first_s, stream, elapsed)
