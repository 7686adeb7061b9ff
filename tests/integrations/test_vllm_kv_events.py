"""The gateway's exact prefix index fed by a real vLLM-CPU server's KV-cache events
(SmolLM2-135M-Instruct): the gateway routes token-id prompts to it, vLLM publishes the blocks
it stores over ZMQ, and the router then matches a repeated prompt's whole cached prefix, a
prompt sharing its first blocks by those blocks, and an unseen prompt by nothing. Then more
prompts than its (deliberately small) cache holds: vLLM evicts the first prompt's blocks, and
the index forgets them too (BlockRemoved).

One server (about a minute to start on two cores), stopped by the test.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from shunter.core.types import RequestSpec
from shunter.gateway.app import AppConfig
from shunter.gateway.config import BackendConfig
from shunter.gateway.factory import GatewayParts, build_app, build_backends

pytest.importorskip("benchmarks._external._proc")

pytestmark = [pytest.mark.slow, pytest.mark.external]

MODEL = "smollm2"
BLOCK_SIZE = 32  # vLLM-CPU's default is 128; the CPU backend wants multiples of 32
PROMPT_LEN = 100  # 3 full blocks (96 tokens) + a partial one vLLM does not cache
EVENTS_TIMEOUT_S = 20.0
NUM_KV_BLOCKS = 32  # 1024 tokens: a dozen more prompts evict the first ones
NUM_FILLERS = 12


def _spec(tokens: list[int], request_id: str) -> RequestSpec:
    return RequestSpec(request_id=request_id, arrival_s=0.0, num_prompt_tokens=len(tokens),
                       num_output_tokens=1, prompt_token_ids=tuple(tokens))


async def _through_gateway(base_url: str, pub: str, replay: str, prompts: list[list[int]],
                           probes: list[list[int]], fillers: list[list[int]]) -> dict[str, Any]:
    backend = BackendConfig(name="vllm", kind="remote", url=base_url, model=MODEL,
                            block_size=BLOCK_SIZE, kv_events=pub, kv_events_replay=replay)
    app = build_app(GatewayParts(app=AppConfig(model_names=(MODEL,)), router="cost",
                                 router_params={"seed": 0}), build_backends([backend], MODEL))
    pool = app.pool
    subscriber = pool.kv_events[0]
    pool.start()
    try:
        await asyncio.sleep(0.5)  # the SUB socket connects (vLLM has published nothing yet)
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=120)

        async def send(batch: list[list[int]]) -> None:
            for prompt in batch:
                response = await client.post("/v1/completions", json={
                    "model": MODEL, "prompt": prompt, "max_tokens": 2, "temperature": 0.0})
                response.raise_for_status()

        await send(prompts)
        index = pool.router.index  # type: ignore[attr-defined]
        exact = index.exact

        def matches() -> list[int | None]:
            return [exact.match_tokens(0, tuple(p)) for p in probes]

        deadline_s = time.perf_counter() + EVENTS_TIMEOUT_S
        while matches()[0] in (None, 0) and time.perf_counter() < deadline_s:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the last batches
        state = exact.blocks(0)
        seen: dict[str, Any] = {
            "exact": matches(),
            "router": [index.match_tokens(0, index.blocks_of(_spec(p, f"probe{i}")))
                       for i, p in enumerate(probes)],
            "block_size": state.block_size, "is_complete": state.is_complete,
            "num_blocks": state.num_blocks}
        await send(fillers)
        await asyncio.sleep(1.0)  # the last batches
        seen.update(after_fillers=matches(), num_blocks_after=state.num_blocks,
                    num_batches=subscriber.num_batches, num_gaps=subscriber.num_gaps,
                    is_complete_after=state.is_complete)
        await client.aclose()
        return seen
    finally:
        await pool.stop()


def test_exact_prefix_index_learns_a_real_vllms_blocks(tmp_path: Path) -> None:
    vllm_cpu = pytest.importorskip("benchmarks._external.vllm_cpu")
    model_dir = vllm_cpu.ensure_smollm2_hf_dir()
    first, second, unseen, *fillers = vllm_cpu.random_prompts(
        num_prompts=3 + NUM_FILLERS, prompt_len=PROMPT_LEN, seed=3)
    sharing = first[:2 * BLOCK_SIZE] + unseen[:PROMPT_LEN - 2 * BLOCK_SIZE]
    # ipc:// sockets: vLLM binds TCP only as tcp://*:PORT, on every interface
    pub, replay = f"ipc://{tmp_path}/kv", f"ipc://{tmp_path}/replay"
    events = {"enable_kv_cache_events": True, "publisher": "zmq",
              "endpoint": pub, "replay_endpoint": replay}
    args = ("--enable-prefix-caching", "--block-size", str(BLOCK_SIZE),
            "--kv-events-config", json.dumps(events),
            "--num-gpu-blocks-override", str(NUM_KV_BLOCKS))
    with vllm_cpu.vllm_server(model_dir, served_model_name=MODEL, max_model_len=512,
                              extra_args=args) as server:
        seen = asyncio.run(asyncio.wait_for(_through_gateway(
            server.base_url, pub, replay, [first, second], [first, second, sharing, unseen],
            fillers), timeout=240))
    full = PROMPT_LEN // BLOCK_SIZE * BLOCK_SIZE
    assert seen["block_size"] == BLOCK_SIZE and seen["is_complete"], seen
    assert seen["num_blocks"] >= 2 * (PROMPT_LEN // BLOCK_SIZE), seen
    assert seen["exact"] == [full, full, 2 * BLOCK_SIZE, 0], seen
    assert seen["router"] == seen["exact"], seen  # the router reads the exact index
    # evicted by the fillers, and forgotten: the approximation would still claim them
    assert seen["after_fillers"][0] < full and seen["is_complete_after"], seen
    assert seen["num_blocks_after"] <= NUM_KV_BLOCKS and seen["num_gaps"] == 0, seen
