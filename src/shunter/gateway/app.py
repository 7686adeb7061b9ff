"""The gateway as one raw ASGI application.

Routes: POST /v1/completions and /v1/chat/completions (streaming SSE or not), GET /v1/models,
/health, /metrics, /openapi.json. Each generation request goes: API key -> tenant; body ->
validated `ApiRequest`; its output length predicted, if a predictor is configured
(`features.py`); admission (rate limits, the gateway tier's queue under the configured core
policy); the replica pool (route, retry, fail over); the answer. Every error becomes OpenAI's JSON error in `_answer_error`, the one
exception handler. A client that disconnects cancels its request's task, which closes the
backend stream, which aborts the backend's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from shunter.backend.protocol import BackendError, GenerateChunk
from shunter.core.predict.interface import Predictor, SessionTracker
from shunter.core.request import Request
from shunter.core.types import RequestSpec
from shunter.errors import RequestError
from shunter.gateway.admission import AdmissionController, Ticket
from shunter.gateway.errors import (
    MethodNotAllowedError,
    NotFoundError,
    ServiceUnavailableError,
    error_response,
)
from shunter.gateway.features import request_features
from shunter.gateway.http import (
    JSON_HEADERS,
    SSE_HEADERS,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_bytes,
    watch_disconnect,
)
from shunter.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from shunter.gateway.openapi import openapi_spec
from shunter.gateway.pool import Attempt, ReplicaPool
from shunter.gateway.schemas import ApiRequest, chunk_json, completion_json, parse_request
from shunter.gateway.tenant import TenantTable

__all__ = ["AppConfig", "GatewayApp"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AppConfig:
    model_names: tuple[str, ...]
    max_body_bytes: int = 4 << 20
    max_prompt_chars: int = 1 << 20
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.model_names:
            raise ValueError("the gateway serves at least one model name")


@dataclass(slots=True, eq=False)
class GatewayApp:
    config: AppConfig
    pool: ReplicaPool
    admission: AdmissionController
    tenants: TenantTable
    metrics: GatewayMetrics
    clock: Callable[[], float] = time.monotonic
    predictor: Predictor | None = None  # sets predicted output lengths (sjf, ltr)
    sessions: SessionTracker = field(default_factory=SessionTracker)
    is_draining: bool = False
    num_in_progress: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _id_prefix: str = field(default_factory=lambda: os.urandom(4).hex())
    _idle: asyncio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        try:
            if path in ("/v1/completions", "/v1/chat/completions"):
                if method != "POST":
                    raise MethodNotAllowedError(f"{path} accepts POST only")
                await self._generate(scope, receive, send, path == "/v1/chat/completions")
                return
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowedError(f"{path} accepts GET only") \
                    if path in _GET_ROUTES else NotFoundError(f"no route {method} {path}")
            await self._get(path, scope, send)
        except Exception as exc:  # the one exception handler: OpenAI error JSON
            await _answer_error(send, exc)

    async def _get(self, path: str, scope: Scope, send: Send) -> None:
        if path == "/health":
            if self.is_draining:
                raise ServiceUnavailableError("draining: shutting down", code="draining")
            healthy = [r.name for r in self.pool.replicas if r.can_route(self.clock())]
            status = 200 if healthy else 503
            body = {"status": "ok" if healthy else "no healthy backend", "healthy": healthy}
            await send_bytes(send, status, json.dumps(body).encode())
        elif path == "/metrics":
            await send_bytes(send, 200, self.metrics.render(),
                             [(b"content-type", CONTENT_TYPE.encode())])
        elif path == "/v1/models":
            self.tenants.authenticate(header(scope, b"authorization"))
            data = [{"id": name, "object": "model", "created": 0, "owned_by": "shunter"}
                    for name in self.config.model_names]
            await send_bytes(send, 200, json.dumps({"object": "list", "data": data}).encode())
        elif path == "/openapi.json":
            await send_bytes(send, 200, json.dumps(openapi_spec()).encode())
        else:
            raise NotFoundError(f"no route GET {path}")

    async def _generate(self, scope: Scope, receive: Receive, send: Send, is_chat: bool) -> None:
        if self.is_draining:
            raise ServiceUnavailableError("draining: shutting down", code="draining")
        arrival_s = self.clock()
        tenant = self.tenants.authenticate(header(scope, b"authorization"))
        raw = await read_body(receive, self.config.max_body_bytes)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(f"malformed JSON body: {exc}", code="invalid_json") from None
        request_id = f"{'chatcmpl' if is_chat else 'cmpl'}-{self._id_prefix}{next(self._ids):x}"
        api = parse_request(body, is_chat=is_chat, request_id=request_id, tenant=tenant.name,
                            clamp_priority=tenant.clamp_priority,
                            program_id=header(scope, b"x-program-id"),
                            session_id=header(scope, b"x-session-id"))
        if api.generate.model not in self.config.model_names:
            raise NotFoundError(f"the model '{api.generate.model}' does not exist; served: "
                                f"{', '.join(self.config.model_names)}", param="model",
                                code="model_not_found")
        if api.num_prompt_chars > self.config.max_prompt_chars:
            raise RequestError(f"prompt of {api.num_prompt_chars} characters is over this "
                               f"gateway's limit of {self.config.max_prompt_chars}",
                               param="messages" if is_chat else "prompt",
                               code="context_length_exceeded")
        spec = self.pool.spec(api.generate)
        request = Request.from_spec(spec, hash_blocks=False)
        request.arrival_s = arrival_s
        if self.predictor is not None:
            request.predicted_output_tokens = self.predictor.predict(
                request_features(api.generate, spec, self.sessions))
            api = replace(api, generate=replace(
                api.generate, predicted_output_tokens=request.predicted_output_tokens))
        if self.pool.dispatch_index is not None:
            self.pool.dispatch_index.add(spec)
        try:
            ticket = await self.admission.admit(request)
        except BaseException:
            if self.pool.dispatch_index is not None:
                self.pool.dispatch_index.forget(request.request_id)  # left without a slot
            raise
        self._enter()
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.get_running_loop().create_task(watch_disconnect(receive, task))
        attempt = Attempt()
        outcome = "error"
        try:
            if api.is_stream:
                await self._stream(api, spec, attempt, send, arrival_s)
            else:
                await self._complete(api, spec, attempt, send, arrival_s)
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            if not watcher.done() or watcher.cancelled():
                raise
            # the client left: its task was cancelled to stop the backend; end quietly
            task.uncancel()
        finally:
            watcher.cancel()
            self._finish(ticket, attempt, arrival_s, outcome)

    async def _complete(self, api: ApiRequest, spec: RequestSpec, attempt: Attempt, send: Send,
                        arrival_s: float) -> None:
        parts: list[str] = []
        finish_reason = None
        async with contextlib.aclosing(self.pool.generate(api.generate, spec, attempt)) as chunks:
            async for chunk in chunks:
                if not parts:  # the backend's first output (the client sees it all at the end)
                    label = (attempt.replica.name,) if attempt.replica else ("none",)
                    self.metrics.ttft_s.observe(self.clock() - arrival_s, label)
                parts.append(chunk.text)
                finish_reason = chunk.finish_reason or finish_reason
        body = completion_json(api, int(time.time()), "".join(parts), finish_reason, attempt.usage)
        await send_bytes(send, 200, body)

    async def _stream(self, api: ApiRequest, spec: RequestSpec, attempt: Attempt, send: Send,
                      arrival_s: float) -> None:
        created = int(time.time())
        is_first = True
        last_s = arrival_s
        chunks = self.pool.generate(api.generate, spec, attempt)
        try:
            async for chunk in chunks:
                if not chunk.text and chunk.finish_reason is None:
                    continue  # a usage-only update: the client hears of usage at the end
                now = self.clock()
                label = (attempt.replica.name,) if attempt.replica else ("none",)
                if is_first:
                    await send({"type": "http.response.start", "status": 200,
                                "headers": SSE_HEADERS})
                    self.metrics.ttft_s.observe(now - arrival_s, label)
                else:
                    self.metrics.itl_s.observe(now - last_s, label)
                last_s = now
                await send({"type": "http.response.body", "more_body": True,
                            "body": _event(api, created, chunk, is_first)})
                is_first = False
        except (BackendError, RequestError) as exc:
            if is_first:
                raise  # nothing sent yet: a proper error status
            status, body, _ = error_response(exc)
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + body + b"\n\n"})
        finally:
            await chunks.aclose()
        tail = chunk_json(api, created, None, None, attempt.usage) if api.include_usage else b""
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})

    def _finish(self, ticket: Ticket, attempt: Attempt, arrival_s: float, outcome: str) -> None:
        usage = attempt.usage
        self.admission.release(ticket, None if usage is None else usage.prompt_tokens,
                               attempt.completion_tokens)
        label = attempt.replica.name if attempt.replica else "none"
        self.metrics.e2e_s.observe(self.clock() - arrival_s, (label,))
        self.metrics.requests.inc((ticket.tenant, outcome))
        if usage is not None:
            self.metrics.prompt_tokens.inc((ticket.tenant,), usage.prompt_tokens)
            self.metrics.completion_tokens.inc((ticket.tenant,), usage.completion_tokens)
        self.num_in_progress -= 1
        if self.num_in_progress == 0 and self._idle is not None:
            self._idle.set()

    def _enter(self) -> None:
        self.num_in_progress += 1
        if self._idle is not None:
            self._idle.clear()

    async def drain(self) -> None:
        """Refuse new requests and wait (bounded) for those in progress to finish."""
        self.is_draining = True
        if self.num_in_progress:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.config.drain_timeout_s)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.pool.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.drain()
                await self.pool.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


_GET_ROUTES = frozenset({"/health", "/metrics", "/v1/models", "/openapi.json"})


def _event(api: ApiRequest, created: int, chunk: GenerateChunk, is_first: bool) -> bytes:
    return chunk_json(api, created, chunk.text, chunk.finish_reason, None, is_first=is_first)


async def _answer_error(send: Send, exc: Exception) -> None:
    status, body, headers = error_response(exc)
    try:
        await send_bytes(send, status, body, [*JSON_HEADERS, *headers])
    except Exception:  # the response had already started: nothing more can be said
        return

