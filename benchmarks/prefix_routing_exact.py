"""Routing on exact vs approximate prefix state: the gateway in front of two vLLM-CPU servers.

    .venv/bin/python -m benchmarks.prefix_routing_exact [--num-requests 160]
        [--foreign-fraction 0.3] [--concurrency 2] [--router cost] [--rounds 2]

Two vLLM-CPU 0.32.0 servers (SmolLM2-135M, bf16, prefix caching, a small cache of
`NUM_KV_BLOCKS` blocks of 32 tokens each, KV events published on ipc:// sockets, on this
machine only) sit behind Shunter's gateway (built in this process, `cost` router). A
Mooncake-style workload: `NUM_GROUPS` long shared prefixes (a document or system prompt of
`PREFIX_LEN` tokens) with a fresh `SUFFIX_LEN`-token question each, groups drawn Zipf-like,
prompts sent as token ids, `--concurrency` clients in a closed loop. `--foreign-fraction` of
the requests go straight to a random server, as another gateway instance's traffic would:
the servers cache them, an approximate index never hears of them.

Run twice on the same servers, their caches reset in between (vLLM's dev-mode
/reset_prefix_cache): the gateway reading each replica's exact cache from its KV events, then
the gateway remembering only what it sent (the approximation). Reported for each: the prefix
hit rate at the servers (vLLM's own prefix-cache counters: hit tokens / queried tokens, all
traffic) and the mean latency of the routed requests (one output token each: their TTFT plus
a sampled token), with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._external import vllm_cpu  # noqa: E402

from shunter.gateway.app import AppConfig  # noqa: E402
from shunter.gateway.config import BackendConfig  # noqa: E402
from shunter.gateway.factory import GatewayParts, build_app, build_backends  # noqa: E402

__all__ = ["main", "workload"]

MODEL = "smollm2"
BLOCK_SIZE = 32  # the CPU backend wants multiples of 32
NUM_KV_BLOCKS = 64  # 2,048 tokens a server: about seven of the shared prefixes
NUM_GROUPS, PREFIX_LEN, SUFFIX_LEN = 12, 256, 32


def workload(num_requests: int, seed: int = 0) -> list[list[int]]:
    """Token-id prompts: a shared prefix (group g drawn with weight 1/(g+1)) + a fresh suffix."""
    rng = random.Random(seed)
    prefixes = vllm_cpu.random_prompts(num_prompts=NUM_GROUPS, prompt_len=PREFIX_LEN, seed=seed)
    suffixes = vllm_cpu.random_prompts(num_prompts=num_requests, prompt_len=SUFFIX_LEN,
                                       seed=seed + 1)
    weights = [1.0 / (g + 1) for g in range(NUM_GROUPS)]
    return [rng.choices(prefixes, weights)[0] + suffix for suffix in suffixes]


def _prefix_counters(client: httpx.Client, url: str) -> tuple[float, float]:
    """vLLM's prefix-cache (hit tokens, queried tokens) so far."""
    hits = queries = 0.0
    for line in client.get(f"{url}/metrics").text.splitlines():
        if line.startswith("vllm:prefix_cache_hits_total"):
            hits += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:prefix_cache_queries_total"):
            queries += float(line.rsplit(" ", 1)[1])
    return hits, queries


async def _run_mode(urls: list[str], sockets: list[tuple[str, str]],
                    prompts: list[list[int]], *,
                    exact: bool, router: str, foreign_fraction: float,
                    concurrency: int) -> dict[str, Any]:
    # (with replay: a later round's gateway joins after earlier rounds' batches, and fills
    # that gap from vLLM's replay buffer, the cache reset's AllBlocksCleared included)
    backends = [BackendConfig(name=f"vllm{i}", kind="remote", url=url, model=MODEL,
                              block_size=BLOCK_SIZE, kv_events=sockets[i][0] if exact else None,
                              kv_events_replay=sockets[i][1] if exact else None)
                for i, url in enumerate(urls)]
    app = build_app(GatewayParts(app=AppConfig(model_names=(MODEL,)), router=router,
                                 router_params={"seed": 0}), build_backends(backends, MODEL))
    app.pool.start()
    rng = random.Random(7)
    foreign = [rng.random() < foreign_fraction for _ in prompts]
    targets = [rng.randrange(len(urls)) for _ in prompts]
    latencies: list[float] = []
    try:
        await asyncio.sleep(0.5)  # the SUB sockets connect
        gateway = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                    base_url="http://gateway", timeout=300)
        direct = httpx.AsyncClient(timeout=300)
        queue = list(range(len(prompts)))

        async def client() -> None:
            while queue:
                i = queue.pop(0)
                body = {"model": MODEL, "prompt": prompts[i], "max_tokens": 1,
                        "temperature": 0.0}
                start = time.perf_counter()
                if foreign[i]:
                    response = await direct.post(f"{urls[targets[i]]}/v1/completions", json=body)
                else:
                    response = await gateway.post("/v1/completions", json=body)
                response.raise_for_status()
                if not foreign[i]:
                    latencies.append(time.perf_counter() - start)
                await asyncio.sleep(0.05)  # let events land, as between real arrivals

        await asyncio.gather(*(client() for _ in range(concurrency)))
        await gateway.aclose()
        await direct.aclose()
    finally:
        await app.pool.stop()
    return {"routed": len(latencies), "mean_latency_s": sum(latencies) / len(latencies)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-requests", type=int, default=160)
    parser.add_argument("--foreign-fraction", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--router", default="cost", choices=("cost", "prefix_affinity", "d2lpm"))
    parser.add_argument("--rounds", type=int, default=1, choices=(1, 2),
                        help="1: exact then approximate; 2: exact, approximate, approximate, "
                             "exact (drift cancels), means reported")
    args = parser.parse_args(argv)
    if args.num_requests < 1 or not 0 <= args.foreign_fraction < 1 or args.concurrency < 1:
        parser.error("--num-requests and --concurrency must be >= 1, --foreign-fraction in [0, 1)")
    model_dir = vllm_cpu.ensure_smollm2_hf_dir()
    prompts = workload(args.num_requests)
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="shunter-kv-") as tmp, \
            contextlib.ExitStack() as stack:
        sockets = [(f"ipc://{tmp}/kv{i}", f"ipc://{tmp}/replay{i}") for i in range(2)]
        servers = []
        for i in range(2):
            events = {"enable_kv_cache_events": True, "publisher": "zmq",
                      "endpoint": sockets[i][0], "replay_endpoint": sockets[i][1]}
            servers.append(stack.enter_context(vllm_cpu.vllm_server(
                model_dir, served_model_name=MODEL, max_model_len=1024, dtype="bfloat16",
                extra_args=("--enable-prefix-caching", "--block-size", str(BLOCK_SIZE),
                            "--kv-events-config", json.dumps(events),
                            "--num-gpu-blocks-override", str(NUM_KV_BLOCKS)),
                env={"VLLM_SERVER_DEV_MODE": "1"})))
        urls = [s.base_url for s in servers]
        # ABBA: the machine's drift over the run falls on both modes alike
        order = ["exact", "approximate", "approximate", "exact"][:2 * args.rounds]
        with httpx.Client(timeout=60) as http:
            for mode in order:
                for url in urls:
                    http.post(f"{url}/reset_prefix_cache").raise_for_status()
                before = [_prefix_counters(http, u) for u in urls]
                load = os.getloadavg()[0]
                run = asyncio.run(_run_mode(urls, sockets, prompts, exact=mode == "exact",
                                            router=args.router,
                                            foreign_fraction=args.foreign_fraction,
                                            concurrency=args.concurrency))
                after = [_prefix_counters(http, u) for u in urls]
                hits = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
                queries = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
                hit_rate = hits / queries if queries else 0.0
                results.setdefault(mode, []).append((hit_rate, run["mean_latency_s"]))
                print(f"{mode:<12} prefix hit rate {hit_rate:.1%}  routed mean latency "
                      f"{1000 * run['mean_latency_s']:.0f} ms ({run['routed']} routed; "
                      f"load {load:.2f}-{os.getloadavg()[0]:.2f})", flush=True)
    mean = {mode: [sum(v) / len(v) for v in zip(*runs, strict=True)]
            for mode, runs in results.items()}
    (exact_hits, exact_s), (approx_hits, approx_s) = mean["exact"], mean["approximate"]
    print(f"\nmeans: exact {exact_hits:.1%} hits, {1000 * exact_s:.0f} ms; approximate "
          f"{approx_hits:.1%} hits, {1000 * approx_s:.0f} ms; exact / approximate: hit rate "
          f"{exact_hits / max(approx_hits, 1e-9):.2f}x, mean latency {exact_s / approx_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
