"""Streamed completions against a real server, timed token by token, and the service each tenant
received over time (w_in = 1 per prompt token, counted at the first token; w_out = 2 per output
token), as `shunter.metrics` counts fairness."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

INPUT_WEIGHT = 1
OUTPUT_WEIGHT = 2
_TIMEOUT_S = 300.0


@dataclass(slots=True)
class Stream:
    """One streamed completion: when each output token arrived."""

    tenant: str
    num_prompt_tokens: int
    sent_s: float
    opened_s: float = 0.0  # when the response's headers came: the server has the request
    token_times_s: list[float] = field(default_factory=list)  # arrival of output token i
    text: str = ""
    finish_reason: str | None = None

    @property
    def finished_s(self) -> float:
        return self.token_times_s[-1]

    def service(self, time_s: float) -> float:
        """Weighted service received by `time_s`."""
        num_out = sum(1 for t in self.token_times_s if t <= time_s)
        return (INPUT_WEIGHT * self.num_prompt_tokens if num_out else 0) + OUTPUT_WEIGHT * num_out


def stream_completion(client: httpx.Client, base_url: str, body: dict[str, Any], *,
                      tenant: str, delay_s: float = 0.0, start_s: float,
                      into: Stream | None = None) -> Stream:
    """POST a streamed /v1/completions after `delay_s` (from `start_s`), with continuous usage
    so that every chunk says how many tokens have come so far; fills `into` as tokens come, if
    given (another thread may watch it). One `client` for all: building one per request costs
    an SSL context each, long enough under load to reorder requests meant to go first."""
    time.sleep(max(0.0, start_s + delay_s - time.perf_counter()))
    body = {**body, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    stream = into or Stream(tenant=tenant, num_prompt_tokens=0, sent_s=0.0)
    stream.sent_s = time.perf_counter()
    with client.stream("POST", f"{base_url}/v1/completions", json=body) as response:
        response.raise_for_status()
        stream.opened_s = time.perf_counter()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[len("data: "):])
            usage = chunk.get("usage") or {}
            stream.num_prompt_tokens = usage.get("prompt_tokens", stream.num_prompt_tokens)
            num_tokens = usage.get("completion_tokens", len(stream.token_times_s))
            stream.token_times_s += [now] * (num_tokens - len(stream.token_times_s))
            for choice in chunk.get("choices") or ():
                stream.text += choice.get("text") or ""
                stream.finish_reason = choice.get("finish_reason") or stream.finish_reason
    return stream


def make_client(num_connections: int) -> httpx.Client:
    limits = httpx.Limits(max_connections=num_connections, max_keepalive_connections=0)
    return httpx.Client(timeout=_TIMEOUT_S, limits=limits)


def stream_all(base_url: str, first: Sequence[tuple[str, dict[str, Any]]],
               then: Sequence[tuple[str, dict[str, Any]]] = (), *, after_tokens: int = 1,
               ready: Callable[[], bool] | None = None,
               timeout_s: float = _TIMEOUT_S) -> list[Stream]:
    """Stream every (tenant, body) of `first` at once, and those of `then` once the server has
    every one of the first (its response is open) and one of them has `after_tokens` output
    tokens (a point in the engine's work, not on the clock: on loaded cores a fixed delay lands
    anywhere in it, and a thread of the first can start late), and `ready()`, if given, says
    so too (an open response is not proof that the engine has the request: a server may send
    its headers before it hands the request on). The streams in that order."""
    requests = [*first, *then]
    streams = [Stream(tenant=tenant, num_prompt_tokens=0, sent_s=0.0) for tenant, _ in requests]
    with make_client(len(requests)) as client, \
            ThreadPoolExecutor(max_workers=len(requests)) as pool:
        def send(i: int) -> Future[Stream]:
            return pool.submit(stream_completion, client, base_url, requests[i][1],
                               tenant=requests[i][0], start_s=time.perf_counter(),
                               into=streams[i])

        futures = [send(i) for i in range(len(first))]
        deadline_s = time.perf_counter() + timeout_s

        def first_are_in() -> bool:
            return (all(s.opened_s for s in streams[:len(first)])
                    and max(len(s.token_times_s) for s in streams[:len(first)]) >= after_tokens
                    and (ready is None or ready()))

        while then and not first_are_in():
            ended = [f for f in futures if f.done()]
            if ended or time.perf_counter() > deadline_s:
                for f in ended:
                    f.result()  # (a stream that failed raises its own error)
                opened = sum(1 for s in streams[:len(first)] if s.opened_s)
                raise RuntimeError(
                    f"the first {len(first)} requests were not all in "
                    f"{'before one of them ended' if ended else f'within {timeout_s} s'}: "
                    f"{opened} responses open, at most "
                    f"{max(len(s.token_times_s) for s in streams[:len(first)])} tokens "
                    f"(waiting for {after_tokens}), ready(): "
                    f"{None if ready is None else ready()}")
            time.sleep(0.005)
        futures += [send(i) for i in range(len(first), len(requests))]
        return [f.result() for f in futures]


def service_gap(streams: Sequence[Stream], first: str, second: str) -> float:
    """The largest difference in service the two tenants received while both were backlogged,
    counted from the moment both were (so the first's head start is not counted against it):
    max over t of |(S1(t) - S1(t0)) - (S2(t) - S2(t0))|, t0 = when the later one sent its
    first request, t up to when either had nothing left."""
    mine = {t: [s for s in streams if s.tenant == t] for t in (first, second)}
    start = max(min(s.sent_s for s in group) for group in mine.values())
    end = min(max(s.finished_s for s in group) for group in mine.values())

    def service(tenant: str, time_s: float) -> float:
        return sum(s.service(time_s) for s in mine[tenant])

    base = {t: service(t, start) for t in mine}
    times = sorted({t for s in streams for t in s.token_times_s if start <= t <= end} | {end})
    return max(abs((service(first, t) - base[first]) - (service(second, t) - base[second]))
               for t in times)
