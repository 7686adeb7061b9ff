"""Measure a live endpoint's step times from outside, through the OpenAI API.

A client sees no steps, only tokens; two experiments expose them:

- prefill: one request alone with a prompt of P tokens and max_tokens=1. Its TTFT is one
  prefill step of P new tokens plus the request's fixed cost (HTTP, tokenization), which the
  fit puts in its per-chunk term. P should stay within the server's token budget per step
  (`max_num_batched_tokens`), or the prompt is split over several steps.
- decode: B requests with C-token prompts sent together, each asked for K tokens with
  ignore_eos. While all B are decoding (after the last first token, before the first last
  token), the gap between two tokens of a stream is one decode step of B requests over about
  B x (C + K/2) KV tokens; the sample is the median gap in that window.

Prompts are unique per request and, through `nonce`, per probe run: a second probe of the same
server must not hit the prefix cache the first one filled. Each prefill length is measured
`num_repeats` times and the median TTFT kept; one untimed request warms the server first.
The result is the (StepShape, seconds) samples `shunter.sim.cost.profile.fit_profile` takes.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import aiohttp

from shunter.bench.client import (
    CONNECTION_ERRORS,
    EndpointConfig,
    api_root,
    fetch_model_info,
    send_request,
    unreachable,
)
from shunter.bench.runner import new_session
from shunter.core.types import RequestSpec, StepShape
from shunter.errors import ConfigError
from shunter.metrics.record import RequestRecord

__all__ = ["ProbePlan", "check_reachable", "decode_gap_s", "endpoint_limits", "endpoint_model",
           "kv_capacity_from_metrics",
           "probe_endpoint"]

StepSample = tuple[StepShape, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbePlan:
    """What to measure; defaults sized for a small CPU model (minutes, not hours)."""

    prefill_tokens: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    decode_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    decode_context_tokens: tuple[int, ...] = (32, 256)
    num_decode_tokens: int = 16
    num_repeats: int = 3

    def __post_init__(self) -> None:
        for name in ("prefill_tokens", "decode_batch_sizes", "decode_context_tokens"):
            values = getattr(self, name)
            if any(v < 1 for v in values):
                raise ConfigError(f"{name} must all be >= 1, got {values}")
        if self.num_decode_tokens < 4:
            raise ConfigError(f"num_decode_tokens must be >= 4, got {self.num_decode_tokens}")
        if self.num_repeats < 1:
            raise ConfigError(f"num_repeats must be >= 1, got {self.num_repeats}")
        if not self.prefill_tokens and not self.decode_batch_sizes:
            raise ConfigError("the probe plan measures nothing")

    @property
    def num_experiments(self) -> int:
        return (len(self.prefill_tokens) * self.num_repeats
                + len(self.decode_batch_sizes) * len(self.decode_context_tokens))


def _spec(request_id: str, num_prompt_tokens: int, num_output_tokens: int) -> RequestSpec:
    """A probe request; its id seeds its prompt text (`prompt_text`), so ids never repeat."""
    return RequestSpec(request_id=request_id, arrival_s=0.0, num_prompt_tokens=num_prompt_tokens,
                       num_output_tokens=num_output_tokens)


def _checked(record: RequestRecord) -> RequestRecord:
    if not record.is_completed or not record.token_times_s:
        raise ConfigError(f"probe request {record.request_id} failed: {record.error}")
    return record


def decode_gap_s(records: Sequence[RequestRecord]) -> float:
    """Median inter-token gap while every stream decodes (module docstring); if the streams
    never overlap, the median of every gap after each stream's second token."""
    start = max(r.token_times_s[0] for r in records)
    end = min(r.token_times_s[-1] for r in records)
    steady = [b - a for r in records for a, b in pairwise(r.token_times_s)
              if a >= start and b <= end and b > a]
    if not steady:
        steady = [b - a for r in records for a, b in pairwise(r.token_times_s[1:])
                  if b > a]
    if not steady:
        raise ConfigError("the decode probe saw no gap between tokens (is the server streaming?)")
    return statistics.median(steady)


async def _prefill_samples(session: aiohttp.ClientSession, config: EndpointConfig,
                           plan: ProbePlan, clock: Callable[[], float],
                           tick: Callable[[], None], nonce: str) -> list[StepSample]:
    samples = []
    for num_tokens in plan.prefill_tokens:
        ttfts, counted = [], num_tokens
        for i in range(plan.num_repeats):
            record = _checked(await send_request(
                session, _spec(f"probe{nonce}-prefill-{num_tokens}-{i}", num_tokens, 1), config,
                clock, max_tokens=1))
            ttfts.append(record.token_times_s[0] - record.arrival_s)
            counted = record.num_prompt_tokens  # what the server tokenized (a BOS counts)
            tick()
        samples.append((StepShape(prefill_chunks=((counted, 0),)), statistics.median(ttfts)))
    return samples


async def _decode_samples(session: aiohttp.ClientSession, config: EndpointConfig,
                          plan: ProbePlan, clock: Callable[[], float],
                          tick: Callable[[], None], nonce: str) -> list[StepSample]:
    samples = []
    k = plan.num_decode_tokens
    for context in plan.decode_context_tokens:
        for batch in plan.decode_batch_sizes:
            specs = [_spec(f"probe{nonce}-decode-{context}-{batch}-{i}", context, k)
                     for i in range(batch)]
            records = [_checked(r) for r in await asyncio.gather(
                *(send_request(session, s, config, clock) for s in specs))]
            prompt_tokens = sum(r.num_prompt_tokens for r in records)
            shape = StepShape(num_decode_requests=batch,
                              num_decode_context_tokens=prompt_tokens + batch * (k // 2))
            samples.append((shape, decode_gap_s(records)))
            tick()
    return samples


async def probe_endpoint(config: EndpointConfig, plan: ProbePlan, *, nonce: str = "",
                         on_progress: Callable[[int], None] | None = None) -> list[StepSample]:
    """Run the plan against `config`'s endpoint; (shape, seconds) samples for the fit.
    `nonce` goes into every prompt: give each probe of one server its own."""
    start = time.perf_counter()
    done = 0

    def clock() -> float:
        return time.perf_counter() - start

    def tick() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done)

    async with new_session(config) as session:
        _checked(await send_request(session, _spec(f"probe{nonce}-warmup", 16, 4), config, clock))
        samples = await _prefill_samples(session, config, plan, clock, tick, nonce)
        samples += await _decode_samples(session, config, plan, clock, tick, nonce)
    return samples


def _label(line: str, name: str) -> str | None:
    key = f'{name}="'
    start = line.find(key)
    if start < 0:
        return None
    start += len(key)
    return line[start:line.find('"', start)]


def kv_capacity_from_metrics(text: str) -> int | None:
    """KV tokens a vLLM server holds, from its `vllm:cache_config_info` metric (num_gpu_blocks
    x block_size; on the CPU backend "gpu" blocks are its CPU KV blocks); None if absent."""
    for line in text.splitlines():
        if line.startswith("vllm:cache_config_info{"):
            blocks, size = _label(line, "num_gpu_blocks"), _label(line, "block_size")
            if blocks and size and blocks.isdigit() and size.isdigit():
                return int(blocks) * int(size)
    return None


async def endpoint_model(url: str, api_key: str | None = None) -> str:
    """The name of the first model the endpoint serves (GET /v1/models)."""
    config = EndpointConfig(url=url, model="?", api_key=api_key)
    async with new_session(config) as session:
        return str((await fetch_model_info(session, url, api_key))["id"])


async def check_reachable(url: str, api_key: str | None = None) -> None:
    """Raise EndpointError unless something answers HTTP at `url` (any status will do: a
    server without GET /v1/models still serves), so a bench of a dead URL fails at once."""
    config = EndpointConfig(url=url, model="?", api_key=api_key)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    async with new_session(config) as session:
        try:
            async with session.get(api_root(url) + "/v1/models", headers=headers):
                pass
        except CONNECTION_ERRORS as exc:
            raise unreachable(url, exc) from None


async def endpoint_limits(config: EndpointConfig) -> tuple[int | None, int | None]:
    """(max_model_len, kv_capacity_tokens) as the endpoint reports them, None where it does not
    (vLLM reports both; Shunter's gateway neither)."""
    root = api_root(config.url)
    async with new_session(config) as session:
        info = await fetch_model_info(session, config.url, config.api_key)
        max_len = info.get("max_model_len")
        try:
            async with session.get(root + "/metrics") as response:
                text = await response.text() if response.status == 200 else ""
        except aiohttp.ClientError:
            text = ""
    return (int(max_len) if isinstance(max_len, int) else None), kv_capacity_from_metrics(text)
