"""Replay a workload against an endpoint, open loop: request i is sent at its trace time.

Open loop means a slow server does not slow the arrivals down (closed-loop load generators
hide queueing delay: Schroeder et al., NSDI'06). Each request is a task sleeping until
`arrival_s - first arrival` after the start; `max_concurrency` optionally caps requests in
flight (a request past the cap waits, and its arrival is when it is sent). Arrival times in
the records are when a request was really sent, on the bench's clock (seconds from start).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from shunter.bench.client import EndpointConfig, send_request
from shunter.core.types import RequestSpec
from shunter.errors import ConfigError
from shunter.metrics.record import RequestRecord

__all__ = ["LATE_S", "BenchRun", "new_session", "run_bench", "run_bench_async"]

ProgressFn = Callable[[int], None]
_CONNECT_TIMEOUT_S = 10.0
LATE_S = 0.05  # sent this much after its time: the client, not the server, was behind


@dataclass(frozen=True, slots=True)
class BenchRun:
    """Records in workload order, and how long the whole replay took."""

    records: list[RequestRecord]
    wall_s: float
    num_late: int  # requests sent more than `LATE_S` after their time (client overloaded)



def new_session(config: EndpointConfig) -> aiohttp.ClientSession:
    """A pooled session with no connection cap (open loop) and the config's read timeout."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT_S,
                                      sock_read=config.request_timeout_s))


async def run_bench_async(specs: Sequence[RequestSpec], config: EndpointConfig, *,
                          max_concurrency: int | None = None,
                          on_progress: ProgressFn | None = None) -> BenchRun:
    """Send every spec at its time and wait for all of them; see the module docstring."""
    if not specs:
        raise ConfigError("the workload has no requests")
    if max_concurrency is not None and max_concurrency < 1:
        raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
    first_s = min(spec.arrival_s for spec in specs)
    start = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - start

    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    num_done = 0
    num_late = 0

    async def one(session: aiohttp.ClientSession, spec: RequestSpec) -> RequestRecord:
        nonlocal num_done, num_late
        due_s = spec.arrival_s - first_s
        delay_s = due_s - clock()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if gate is not None:
            await gate.acquire()
        try:
            if clock() - due_s > LATE_S:
                num_late += 1
            return await send_request(session, spec, config, clock)
        finally:
            if gate is not None:
                gate.release()
            num_done += 1
            if on_progress is not None:
                on_progress(num_done)

    async with new_session(config) as session:
        records = await asyncio.gather(*(one(session, spec) for spec in specs))
    return BenchRun(list(records), clock(), num_late)


def run_bench(specs: Sequence[RequestSpec], config: EndpointConfig, *,
              max_concurrency: int | None = None,
              on_progress: ProgressFn | None = None) -> BenchRun:
    """`run_bench_async` on a fresh event loop (the CLI's entry)."""
    return asyncio.run(run_bench_async(specs, config, max_concurrency=max_concurrency,
                                       on_progress=on_progress))
