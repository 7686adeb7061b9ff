"""A remote OpenAI-compatible server (vLLM, llama.cpp's llama-server, any other) as an EngineClient.

One pooled `aiohttp` session per backend, created lazily inside the serving loop. aiohttp rather
than httpx because its C-accelerated HTTP parser and lighter request path cost a fraction of
httpx's per request on the CPU, and the gateway's added latency is what we are measured on.
Non-streaming requests to a plain http:// backend go through `h1.H1Client` instead, a
keep-alive protocol over httptools that costs a fraction of aiohttp's request path.

The backend gets the client's body, every field passed through (`request_payload`): only the
model name, the tenant's clamped priority and, for streams, `stream_options.include_usage`
and vLLM's `continuous_usage_stats` are set, so every chunk carries cumulative token counts
(token counts come from `usage`, never from counting chunks; a server that ignores the option
still sends usage at the end). Every event and whole answer comes back as the chunk's
`payload`, forwarded to the client as is. A resumed request (`continuation`) becomes a
completion prompt with the text appended, or a chat whose last message is the partial
assistant turn with vLLM's `continue_final_message` (llama-server continues a trailing
assistant message by itself). Closing a stream closes its connection,
which is how OpenAI-compatible servers learn to abort a request.

Load comes from the backend's Prometheus /metrics: vLLM's `vllm:num_requests_running`,
`vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc` (or the older `gpu_cache_usage_perc`),
`vllm:num_preemptions_total`; llama-server's `llamacpp:requests_processing`,
`llamacpp:requests_deferred`, `llamacpp:kv_cache_usage_ratio`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from shunter.backend.protocol import (
    BackendError,
    BackendLoad,
    GenerateChunk,
    GenerateRequest,
)
from shunter.gateway.backend_events import SseEvents, backend_error, whole_chunk
from shunter.gateway.h1 import H1Client
from shunter.gateway.jsonio import dumps, loads
from shunter.gateway.resume import resume_payload

__all__ = ["RemoteConfig", "RemoteEngineClient", "parse_load", "request_payload"]

# Prometheus metric name -> BackendLoad field, summed over label sets
_LOAD_METRICS: dict[str, str] = {
    "vllm:num_requests_running": "num_running",
    "vllm:num_requests_waiting": "num_waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
    "vllm:gpu_cache_usage_perc": "kv_usage",
    "vllm:num_preemptions_total": "num_preemptions",
    "vllm:num_preemptions": "num_preemptions",
    "llamacpp:requests_processing": "num_running",
    "llamacpp:requests_deferred": "num_waiting",
    "llamacpp:kv_cache_usage_ratio": "kv_usage",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteConfig:
    url: str  # base URL, e.g. http://127.0.0.1:8001 (the /v1 paths are appended)
    model: str | None = None  # the backend's model name; None: the client's model name
    api_key: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0  # between two reads of a stream
    health_path: str = "/health"
    metrics_path: str | None = "/metrics"  # None: the backend reports no load
    continuous_usage: bool = True
    # failover: "tokens" (the server takes `return_token_ids` and token-id prompts: vLLM),
    # "text", or "auto" (tokens once its /metrics shows it is vLLM)
    resume: str = "auto"

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"backend url must start with http:// or https://, got {self.url!r}")
        if self.resume not in ("auto", "tokens", "text"):
            raise ValueError(f"resume must be auto, tokens or text, got {self.resume!r}")


def request_payload(request: GenerateRequest, model: str | None, continuous_usage: bool
                    ) -> dict[str, Any]:
    """The OpenAI body for `request`: the client's own, every field passed through, with the
    backend's model name, the tenant's clamped priority, and (streams) the usage options the
    gateway needs; a replay appends its continuation and lowers its token cap."""
    body = dict(request.body) if request.body is not None else _typed_body(request)
    body["model"] = model or request.model
    if request.priority:
        body["priority"] = request.priority
    elif "priority" in body:  # the tenant's clamp may have changed it
        body["priority"] = 0
    if request.stream:
        body["stream"] = True
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        if continuous_usage:
            options["continuous_usage_stats"] = True
        body["stream_options"] = options
    if request.continuation:
        if request.messages is not None:
            messages = list(body["messages"])
            messages.append({"role": "assistant", "content": request.continuation})
            body.update(messages=messages, continue_final_message=True,
                        add_generation_prompt=False)
        else:
            body["prompt"] = (request.prompt if isinstance(request.prompt, str) else "") \
                + request.continuation
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        if request.max_tokens is not None:
            body[key] = request.max_tokens
    return body


def _typed_body(request: GenerateRequest) -> dict[str, Any]:
    """The body of a request built in code rather than received (probes, tests)."""
    body: dict[str, Any] = {"model": request.model, "temperature": request.temperature,
                            "top_p": request.top_p, "stream": request.stream}
    if request.messages is not None:
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
    else:
        body["prompt"] = request.prompt if isinstance(request.prompt, str) \
            else list(request.prompt or ())
    for key in ("max_tokens", "seed"):
        if getattr(request, key) is not None:
            body[key] = getattr(request, key)
    if request.stop:
        body["stop"] = list(request.stop)
    if request.ignore_eos:
        body["ignore_eos"] = True
    return body


def parse_load(text: str, now_s: float) -> BackendLoad | None:
    """A BackendLoad from Prometheus text, or None if it has none of the known metrics."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, rest = line.partition("{") if "{" in line.split(" ", 1)[0] else line.partition(" ")
        field = _LOAD_METRICS.get(name.strip())
        if field is None:
            continue
        try:
            value = float(rest.rsplit("}", 1)[-1].split()[0])
        except (IndexError, ValueError):
            continue
        found[field] = found.get(field, 0.0) + value
    if not found:
        return None
    return BackendLoad(num_waiting=int(found.get("num_waiting", 0)),
                       num_running=int(found.get("num_running", 0)),
                       kv_usage=min(1.0, found.get("kv_usage", 0.0)),
                       num_preemptions=int(found.get("num_preemptions", 0)), taken_at_s=now_s)


class RemoteEngineClient:
    """An OpenAI-compatible server reached over HTTP."""

    __slots__ = ("_h1", "_session", "config", "is_vllm")

    def __init__(self, config: RemoteConfig) -> None:
        self.config = config
        self.is_vllm = False  # its /metrics has vLLM's series (resume "auto")
        self._session: aiohttp.ClientSession | None = None
        self._h1: H1Client | None = None
        if config.url.startswith("http://"):
            headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else None
            self._h1 = H1Client(config.url, headers=headers,
                                connect_timeout_s=config.connect_timeout_s,
                                read_timeout_s=config.read_timeout_s)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"authorization": f"Bearer {self.config.api_key}"} \
                if self.config.api_key else {}
            self._session = aiohttp.ClientSession(
                base_url=self.config.url.rstrip("/") + "/", headers=headers,
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(sock_connect=self.config.connect_timeout_s,
                                              sock_read=self.config.read_timeout_s),
                json_serialize=json.dumps, auto_decompress=False)
        return self._session

    def submit(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        if self._h1 is not None and request.stream:  # the hot path: one generator, no relay
            return self._stream(*self._prepare(request))
        return self._run(request)

    def resumes_by_tokens(self) -> bool:
        return self.config.resume == "tokens" or (self.config.resume == "auto" and self.is_vllm)

    def _prepare(self, request: GenerateRequest) -> tuple[str, dict[str, Any], bool, int]:
        """(path, body, is_chat, ids) of what goes to the backend (`ids`: see `event_chunk`)."""
        path = "v1/chat/completions" if request.is_chat else "v1/completions"
        is_chat, ids = request.is_chat, 0
        if request.resume_token_ids is not None:
            path, is_chat, ids = "v1/completions", False, 3
            payload = resume_payload(request, self.config.model, self.config.continuous_usage)
        else:
            payload = request_payload(request, self.config.model, self.config.continuous_usage)
            if request.stream and request.is_token_resumable and self.resumes_by_tokens():
                ids = 2 if payload.get("return_token_ids") else 1
                payload["return_token_ids"] = True
        return path, payload, is_chat, ids

    async def _run(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        path, payload, is_chat, ids = self._prepare(request)
        if self._h1 is not None:  # (a stream over h1 is `_stream`, straight from `submit`)
            yield await self._complete(path, payload, request.is_chat)
            return
        try:
            async with self._http().post(path, json=payload) as response:
                if response.status >= 400:
                    raw = await response.read()
                    raise backend_error(raw, response.status)
                if not request.stream:
                    yield whole_chunk(loads(await response.read()), request.is_chat)
                    return
                events = SseEvents(is_chat, ids)
                async for data in response.content.iter_any():
                    for chunk in events.feed(data):
                        yield chunk
                    if events.is_done:
                        return
                events.check_end()
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
            raise BackendError(f"backend {self.config.url}: {type(exc).__name__}: {exc}") from None

    async def _complete(self, path: str, payload: dict[str, Any], is_chat: bool
                        ) -> GenerateChunk:
        assert self._h1 is not None
        try:
            status, raw = await self._h1.post(path, dumps(payload))
            if status >= 400:
                raise backend_error(raw, status)
            return whole_chunk(loads(raw), is_chat)
        except (TimeoutError, OSError, ValueError, KeyError) as exc:
            raise BackendError(f"backend {self.config.url}: {type(exc).__name__}: {exc}") from None

    async def _stream(self, path: str, payload: dict[str, Any], is_chat: bool, ids: int
                      ) -> AsyncIterator[GenerateChunk]:
        """A streamed answer over `h1`: its SSE `data:` lines as chunks, read as they come."""
        assert self._h1 is not None
        try:
            stream = await self._h1.stream(path, dumps(payload))
        except (TimeoutError, OSError) as exc:
            raise BackendError(f"backend {self.config.url}: {type(exc).__name__}: {exc}") from None
        try:
            if stream.status >= 400:
                raw = b""
                while data := await stream.read():
                    raw += data
                raise backend_error(raw, stream.status)
            events = SseEvents(is_chat, ids)
            while data := await stream.read():
                for chunk in events.feed(data):
                    yield chunk
                if events.is_done:
                    stream.release_at_end()
                    return
            events.check_end()
        except (TimeoutError, OSError, ValueError, KeyError) as exc:
            raise BackendError(f"backend {self.config.url}: {type(exc).__name__}: {exc}") from None
        finally:
            stream.release()

    async def abort(self, request_id: str) -> None:
        return None  # closing the stream's connection is the abort

    def unsupported(self, request: GenerateRequest) -> tuple[str, str] | None:
        return None  # an OpenAI-compatible server answers for itself

    async def request(self, path: str, body: Mapping[str, Any]) -> tuple[int, bytes]:
        payload = {**body, "model": self.config.model or body.get("model")} \
            if "model" in body or self.config.model else dict(body)
        try:
            async with self._http().post(path.lstrip("/"), json=payload) as response:
                return response.status, await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise BackendError(f"backend {self.config.url}: {type(exc).__name__}: {exc}") from None

    async def load(self) -> BackendLoad | None:
        """The backend's load from its metrics; None when it has none, or when they could not
        be read this time (the connection dropped: its health says whether it is up)."""
        if self.config.metrics_path is None:
            return None
        try:
            async with self._http().get(self.config.metrics_path.lstrip("/")) as response:
                if response.status != 200:
                    return None
                text = await response.text()
        except aiohttp.ClientError:
            return None
        self.is_vllm = "vllm:" in text
        return parse_load(text, time.monotonic())

    async def health(self) -> bool:
        try:
            async with self._http().get(self.config.health_path.lstrip("/")) as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def close(self) -> None:
        if self._h1 is not None:
            self._h1.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
