"""How well does a router know a vLLM replica's prefix cache? Exact (its KV events) vs the
approximation (what the router sent there, bounded by the replica's true capacity).

One vLLM-CPU server (SmolLM2-135M, a deliberately small cache of `NUM_KV_BLOCKS` blocks) gets
a shared-prefix workload one request at a time. Before each request both indexes predict its
cached prefix; vLLM then reports the true one (`usage.prompt_tokens_details.cached_tokens`).
Reported: how often each prediction is exactly right, and its mean absolute error in tokens.
`--foreign-fraction f`: that fraction of the requests comes from elsewhere (another gateway
instance): the replica caches them, the approximation never hears of them.

    .venv/bin/python -m benchmarks.kv_events_accuracy [--num-requests 60] [--foreign-fraction 0.5]

Recorded (2 cores, vLLM-CPU 0.32.0, 60 requests): all from this router: exact right 60/60
(mean error 0 tokens), approximation 59/60 (0.5 tokens); half from elsewhere: exact 60/60
(0 tokens), approximation 51/60 (9.6 tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile

import httpx
from benchmarks._external import vllm_cpu

from shunter.core.types import RequestSpec
from shunter.gateway.kv_events import KvEventSubscriber
from shunter.router.exact_index import ExactPrefixIndex
from shunter.router.interface import ReplicaView
from shunter.router.prefix_index import PrefixIndex

__all__ = ["main"]

MODEL = "smollm2"
BLOCK_SIZE = 32
NUM_KV_BLOCKS = 32  # 1024 tokens: about ten prompts
NUM_GROUPS, PREFIX_LEN, SUFFIX_LEN = 6, 64, 36  # 100-token prompts sharing 2 blocks per group


def _workload(num_requests: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    prefixes = vllm_cpu.random_prompts(num_prompts=NUM_GROUPS, prompt_len=PREFIX_LEN, seed=seed)
    suffixes = vllm_cpu.random_prompts(num_prompts=num_requests, prompt_len=SUFFIX_LEN,
                                       seed=seed + 1)
    return [rng.choice(prefixes) + suffix for suffix in suffixes]


async def _run(base_url: str, pub: str, prompts: list[list[int]],
               foreign_fraction: float) -> dict[str, float]:
    rng = random.Random(1)
    exact = ExactPrefixIndex()
    subscriber = KvEventSubscriber(exact, 0, pub, block_size=BLOCK_SIZE)
    approx = PrefixIndex()
    view = ReplicaView(replica_id=0, num_total_blocks=NUM_KV_BLOCKS, block_size=BLOCK_SIZE)
    subscriber.start()
    await asyncio.sleep(0.5)
    errors: dict[str, list[int]] = {"exact": [], "approx": []}
    async with httpx.AsyncClient(timeout=120) as client:
        for i, prompt in enumerate(prompts):
            spec = RequestSpec(request_id=str(i), arrival_s=0.0, num_prompt_tokens=len(prompt),
                               num_output_tokens=1, prompt_token_ids=tuple(prompt),
                               hash_block_size=BLOCK_SIZE)
            blocks = approx.blocks_of(spec)
            guess = {"exact": exact.match_tokens(0, spec.prompt_token_ids) or 0,
                     # whole blocks, and never the last token (vLLM recomputes it)
                     "approx": min(approx.match_tokens(0, blocks), len(prompt) - 1)
                     // BLOCK_SIZE * BLOCK_SIZE}
            response = await client.post(f"{base_url}/v1/completions", json={
                "model": MODEL, "prompt": prompt, "max_tokens": 2, "temperature": 0.0})
            response.raise_for_status()
            details = response.json()["usage"].get("prompt_tokens_details") or {}
            true = int(details.get("cached_tokens") or 0)
            for name, value in guess.items():
                errors[name].append(abs(value - true))
            if rng.random() >= foreign_fraction:
                approx.record(blocks, view)
            await asyncio.sleep(0.3)  # this request's events
    await subscriber.stop()
    return {f"{name}_{stat}": value for name, e in errors.items() for stat, value in (
        ("exactly_right", sum(x == 0 for x in e) / len(e)), ("mean_abs_error_tokens",
                                                            sum(e) / len(e)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=60)
    parser.add_argument("--foreign-fraction", type=float, default=0.0)
    args = parser.parse_args()
    # an ipc:// socket: vLLM binds TCP only as tcp://*:PORT, on every interface
    with tempfile.TemporaryDirectory(prefix="shunter-kv-") as tmp:
        result = _serve_and_run(f"ipc://{tmp}/kv", args.num_requests, args.foreign_fraction)
    print(json.dumps(result, indent=2))


def _serve_and_run(pub: str, num_requests: int, foreign_fraction: float) -> dict[str, float]:
    events = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": pub}
    extra = ("--enable-prefix-caching", "--block-size", str(BLOCK_SIZE), "--kv-events-config",
             json.dumps(events), "--num-gpu-blocks-override", str(NUM_KV_BLOCKS),
             "--enable-prompt-tokens-details")
    with vllm_cpu.vllm_server(vllm_cpu.ensure_smollm2_hf_dir(), served_model_name=MODEL,
                              max_model_len=512, extra_args=extra) as server:
        return asyncio.run(_run(server.base_url, pub, _workload(num_requests),
                                foreign_fraction))


if __name__ == "__main__":
    main()
