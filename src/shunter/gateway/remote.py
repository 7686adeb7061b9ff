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
    Usage,
)
from shunter.gateway.h1 import H1Client
from shunter.gateway.jsonio import dumps, loads
from shunter.gateway.resume import resume_payload, split_token_ids

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


def _error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        error = body.get("error", body)
        return str(error.get("message", error) if isinstance(error, dict) else error)
    except (ValueError, AttributeError):
        return raw[:500].decode("utf-8", "replace")


def _backend_error(raw: bytes, status: int) -> BackendError:
    """A backend's error answer: its message, `param` and (string) `code`, for the client."""
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        error = None
    found = {k: error.get(k) for k in ("param", "code")} if isinstance(error, dict) else {}
    return BackendError(_error_message(raw), status_code=status,
                        **{k: v for k, v in found.items() if isinstance(v, str)})


def _has_tool_calls(choices: Any, key: str) -> bool:
    return any((c.get(key) or {}).get("tool_calls") for c in choices)


def _shape_error(obj: Any, is_chat: bool, part: str) -> str | None:
    """What is wrong with the shape of a backend's event or answer (valid JSON of the wrong
    shape must fail over like any broken stream, not cut it); None when it is right."""
    if not isinstance(obj, dict):
        return f"an event that is not an object ({type(obj).__name__})"
    choices = obj.get("choices", [])
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        return "'choices' that is not an array of objects"
    for c in choices:
        inner = c.get(part) if is_chat else c
        if is_chat and inner is not None and not isinstance(inner, dict):
            return f"a choice whose {part} is not an object"
        text = (inner or {}).get("content" if is_chat else "text")
        if text is not None and not isinstance(text, str):
            return "a choice whose text is not a string"
        if not isinstance(c.get("index", 0), int):
            return "a choice whose index is not an integer"
    usage = obj.get("usage")
    if usage is not None and not (isinstance(usage, dict) and all(
            isinstance(usage.get(k, 0), int) for k in ("prompt_tokens", "completion_tokens"))):
        return "a 'usage' that is not token counts"
    return None


def _chunk(obj: Any, is_chat: bool, ids: int = 0) -> GenerateChunk | None:
    """One SSE event as a chunk: the event itself (`payload`) plus what the gateway reads.
    `ids`: 0 no token ids asked for; 1 asked for by the gateway (taken out of the event); 2
    asked for by the client (left in); 3 a resumed stream (rendered by the gateway: no
    payload)."""
    if isinstance(obj, dict) and "error" in obj:
        raise BackendError(f"backend error mid-stream: {_error_message(json.dumps(obj).encode())}")
    wrong = _shape_error(obj, is_chat, "delta")
    if wrong is not None:
        raise BackendError(f"backend sent {wrong}: {json.dumps(obj)[:200]}")
    token_ids = prompt_ids = None
    if ids:
        try:
            token_ids, prompt_ids = split_token_ids(obj, keep=ids == 2)
        except ValueError as exc:
            raise BackendError(f"backend sent {exc}") from None
    usage = obj.get("usage")
    choices = obj.get("choices") or ()
    text, finish, index = "", None, 0
    if choices:
        choice = choices[0]
        text = (choice.get("delta") or {}).get("content") or "" if is_chat \
            else choice.get("text") or ""
        finish = choice.get("finish_reason")
        index = choice.get("index", 0)
    parsed = Usage(usage["prompt_tokens"], usage.get("completion_tokens") or 0) if usage else None
    cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
    return GenerateChunk(text, finish, parsed, cached, index=index,
                         payload=None if ids == 3 else obj,
                         has_tool_calls=is_chat and _has_tool_calls(choices, "delta"),
                         token_ids=token_ids, prompt_token_ids=prompt_ids)


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
        return self._run(request)

    def resumes_by_tokens(self) -> bool:
        return self.config.resume == "tokens" or (self.config.resume == "auto" and self.is_vllm)

    async def _run(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
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
        if self._h1 is not None:
            if not request.stream:
                yield await self._complete(path, payload, request.is_chat)
                return
            async for chunk in self._stream(path, payload, is_chat, ids):
                yield chunk
            return
        try:
            async with self._http().post(path, json=payload) as response:
                if response.status >= 400:
                    raw = await response.read()
                    raise _backend_error(raw, response.status)
                if not request.stream:
                    yield _whole(json.loads(await response.read()), request.is_chat)
                    return
                async for chunk in _sse_chunks(response, is_chat, ids):
                    yield chunk
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
            raise BackendError(f"backend {self.config.url}: {type(exc).__name__}: {exc}") from None

    async def _complete(self, path: str, payload: dict[str, Any], is_chat: bool
                        ) -> GenerateChunk:
        assert self._h1 is not None
        try:
            status, raw = await self._h1.post(path, dumps(payload))
            if status >= 400:
                raise _backend_error(raw, status)
            return _whole(loads(raw), is_chat)
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
                raise _backend_error(raw, stream.status)
            is_finished, rest = False, b""
            while data := await stream.read():
                lines = (rest + data if rest else data).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    event = line[5:].strip()
                    if event == b"[DONE]":
                        stream.release_at_end()
                        return
                    chunk = _chunk(loads(event), is_chat, ids)
                    if chunk is not None:
                        is_finished = is_finished or chunk.finish_reason is not None
                        yield chunk
            if not is_finished:
                raise BackendError("backend stream ended before the request finished")
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
        if self.config.metrics_path is None:
            return None
        async with self._http().get(self.config.metrics_path.lstrip("/")) as response:
            if response.status != 200:
                return None
            text = await response.text()
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


def _whole(body: Any, is_chat: bool) -> GenerateChunk:
    """A whole answer as one chunk (its `payload` is the answer)."""
    wrong = _shape_error(body, is_chat, "message")
    if wrong is not None or not body.get("choices"):
        raise BackendError(f"backend answered with {wrong or 'no choices'}: "
                           f"{json.dumps(body)[:200]}")
    choices = body["choices"]
    choice = choices[0]
    text = (choice.get("message") or {}).get("content") or "" if is_chat else choice.get("text", "")
    usage = body.get("usage")
    cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
    return GenerateChunk(text or "", choice.get("finish_reason"),
                         Usage(usage["prompt_tokens"], usage["completion_tokens"]) if usage
                         else None, cached, payload=body,
                         has_tool_calls=is_chat and _has_tool_calls(choices, "message"))


async def _sse_chunks(response: aiohttp.ClientResponse, is_chat: bool, ids: int
                      ) -> AsyncIterator[GenerateChunk]:
    is_finished = False
    async for line in response.content:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        chunk = _chunk(json.loads(data), is_chat, ids)
        if chunk is not None:
            is_finished = is_finished or chunk.finish_reason is not None
            yield chunk
    if not is_finished:
        raise BackendError("backend stream ended before the request finished")
