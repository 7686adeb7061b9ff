"""What getting text prompts' ids from /tokenize adds to routing: fake backends, one process.

    .venv/bin/python -m benchmarks.exact_text_latency [--num-requests 2000] [--num-words 200]
        [--repeats 3]

Two fake backends (`FakeEngineClient`, in-process) behind the gateway (built in this process,
`prefix_affinity` router), sequential text completions of `--num-words` words (one of 8 shared
prefixes plus a unique tail, so each prompt is a cache miss unless the mode repeats it):

- `no_feed`: no backend publishes KV events: no /tokenize round trip (the baseline);
- `exact_miss`: both publish (their histories complete): every prompt asks /tokenize, in process;
- `exact_http`: the same, /tokenize answered over loopback HTTP (aiohttp server in this process,
  `RemoteEngineClient.request`), as a vLLM's API server answers it;
- `exact_cached`: one prompt, repeated: the tokenize cache answers.

Timed per request: the routing step (`pool.with_token_ids` then `pool.choose`), and a whole
request through the ASGI app (max_tokens 1). Reported: medians in us, and ratios to `no_feed`
in the same run, with the load average. Modes interleave per repeat to share the machine's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import zlib

import aiohttp.web
import httpx
import msgpack

from shunter.backend.protocol import GenerateRequest
from shunter.gateway.app import AppConfig
from shunter.gateway.factory import BackendSlot, GatewayParts, build_app
from shunter.gateway.fake import FakeEngineClient
from shunter.gateway.remote import RemoteConfig, RemoteEngineClient

MODES = ("no_feed", "exact_miss", "exact_http", "exact_cached")
NUM_PREFIXES = 8
EMPTY_BATCH = msgpack.packb([0.0, [], None])


class HttpTokenizeFake(FakeEngineClient):
    """The fake backend whose /tokenize goes over HTTP to `tokenizer`."""

    def __init__(self, tokenizer: RemoteEngineClient) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    async def request(self, path, body):  # type: ignore[override]
        return await self.tokenizer.request(path, body)

    async def close(self) -> None:
        await self.tokenizer.close()


async def tokenize_server() -> tuple[aiohttp.web.AppRunner, int]:
    async def tokenize(request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await request.json()
        tokens = [zlib.crc32(w.encode()) % 50_000 for w in body["prompt"].split()]
        return aiohttp.web.json_response({"count": len(tokens), "max_model_len": 4096,
                                          "tokens": tokens})

    app = aiohttp.web.Application()
    app.router.add_post("/tokenize", tokenize)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def prompts(num: int, num_words: int, seed: str) -> list[str]:
    tail = max(1, num_words // 4)
    heads = [" ".join(f"p{k}w{j}" for j in range(num_words - tail)) for k in range(NUM_PREFIXES)]
    return [heads[i % NUM_PREFIXES] + " " + " ".join(f"{seed}{i}t{j}" for j in range(tail))
            for i in range(num)]


async def make_app(mode: str, port: int):
    if mode == "exact_http":
        clients = [HttpTokenizeFake(RemoteEngineClient(RemoteConfig(
            url=f"http://127.0.0.1:{port}", model="fake-model"))) for _ in range(2)]
    else:
        clients = [FakeEngineClient() for _ in range(2)]
    events = None if mode == "no_feed" else "tcp://127.0.0.1:1"
    slots = [BackendSlot(name=f"r{i}", client=c, kv_events=events, block_size=16,
                         max_concurrency=1024) for i, c in enumerate(clients)]
    app = build_app(GatewayParts(app=AppConfig(model_names=("fake-model",)),
                                 router="prefix_affinity"), slots)
    for sub in app.pool.kv_events:
        await sub.on_batch(0, EMPTY_BATCH)  # histories complete: exact from here
    return app


async def time_routing(app, texts: list[str]) -> list[float]:
    pool, out = app.pool, []
    for i, text in enumerate(texts):
        request = GenerateRequest(request_id=f"q{i}", model="fake-model", prompt=text,
                                  max_tokens=1, body={"model": "fake-model", "prompt": text})
        spec = pool.spec(request)
        started = time.perf_counter()
        spec = await pool.with_token_ids(request, spec)
        pool.choose(spec, set(), request)
        out.append(time.perf_counter() - started)
    return out


async def time_requests(app, texts: list[str]) -> list[float]:
    out = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        for text in texts:
            started = time.perf_counter()
            answer = await client.post("/v1/completions", json={
                "model": "fake-model", "prompt": text, "max_tokens": 1})
            out.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
    return out


async def main(args: argparse.Namespace) -> None:
    runner, port = await tokenize_server()
    routing: dict[str, list[float]] = {m: [] for m in MODES}
    whole: dict[str, list[float]] = {m: [] for m in MODES}
    load_before = os.getloadavg()
    for r in range(args.repeats):
        for mode in MODES:
            app = await make_app(mode, port)
            seed = f"r{r}{mode[:3]}"
            texts = prompts(args.num_requests, args.num_words, seed)
            if mode == "exact_cached":
                texts = [texts[0]] * len(texts)
            routing[mode] += await time_routing(app, texts)
            await app.pool.stop()
            app = await make_app(mode, port)
            few = prompts(args.num_requests // 4, args.num_words, seed + "w")
            whole[mode] += await time_requests(app, [few[0]] * len(few)
                                               if mode == "exact_cached" else few)
            await app.pool.stop()
            counts = dict(app.pool.tokenizer.outcomes.values)
            assert mode == "no_feed" or counts, f"{mode}: nothing tokenized"
    await runner.cleanup()
    base_r = statistics.median(routing["no_feed"])
    base_w = statistics.median(whole["no_feed"])
    print(f"load average before {load_before}, after {os.getloadavg()}; "
          f"{args.num_words}-word prompts, {args.repeats} x {args.num_requests} routings, "
          f"{args.repeats} x {args.num_requests // 4} requests per mode")
    print(f"{'mode':14} {'route med us':>13} {'p99 us':>9} {'ratio':>6} "
          f"{'request med us':>15} {'ratio':>6}")
    for mode in MODES:
        med_r = statistics.median(routing[mode])
        p99_r = statistics.quantiles(routing[mode], n=100)[98]
        med_w = statistics.median(whole[mode])
        print(f"{mode:14} {med_r * 1e6:13.1f} {p99_r * 1e6:9.1f} {med_r / base_r:6.2f} "
              f"{med_w * 1e6:15.1f} {med_w / base_w:6.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-requests", type=int, default=2000)
    parser.add_argument("--num-words", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
