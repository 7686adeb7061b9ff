"""The gateway as one raw ASGI application.

Routes: POST /v1/completions and /v1/chat/completions (streaming SSE or not, `generation.py`);
GET /v1/models and /v1/models/{id}, /health, /metrics, /openapi.json, /version; POST /tokenize
and /detokenize (vLLM's), /v1/embeddings and /v1/responses, forwarded to a backend that serves
them. Each generation request goes: API key -> tenant; body -> validated `ApiRequest`; its
output length predicted, if a predictor is configured; admission (rate limits, the gateway
tier's queue under the configured core policy); the replica pool (route, retry, fail over);
the answer. Every answer carries `x-request-id` (the client's own, if it sent one) and, with
`cors_origins` configured, CORS headers. Every error becomes OpenAI's JSON error in
`_answer_error`, the one exception handler. A client that disconnects cancels its request's
task, which closes the backend stream, which aborts the backend's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from shunter import __version__
from shunter.core.predict.interface import Predictor, SessionTracker
from shunter.errors import RequestError
from shunter.gateway.admission import AdmissionController
from shunter.gateway.errors import (
    AuthenticationError,
    MethodNotAllowedError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
    error_response,
)
from shunter.gateway.forward import forward_endpoint, model_entry
from shunter.gateway.generation import Part, make_parts, stream_answer, whole_answer
from shunter.gateway.http import (
    JSON_HEADERS,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_bytes,
    watch_disconnect,
    with_headers,
)
from shunter.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from shunter.gateway.openapi import openapi_spec
from shunter.gateway.pool import ReplicaPool
from shunter.gateway.render import Rendering
from shunter.gateway.schemas import decode_body, parse_request
from shunter.gateway.tenant import TenantTable

__all__ = ["AppConfig", "GatewayApp", "Service"]

log = logging.getLogger("shunter.gateway")

_GENERATE_ROUTES = ("/v1/completions", "/v1/chat/completions")
_FORWARD_ROUTES = frozenset({"/tokenize", "/detokenize", "/v1/embeddings", "/v1/responses"})
_GET_ROUTES = frozenset({"/health", "/metrics", "/v1/models", "/openapi.json", "/version"})
_MAX_CLIENT_ID_CHARS = 256
_CORS_EXPOSED = b"x-request-id, retry-after, x-ratelimit-limit-requests, " \
    b"x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, " \
    b"x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"


@dataclass(frozen=True, slots=True, kw_only=True)
class AppConfig:
    model_names: tuple[str, ...]
    max_body_bytes: int = 4 << 20
    max_prompt_chars: int = 1 << 20
    drain_timeout_s: float = 30.0
    keepalive_s: float = 5.0  # SSE comments while a stream waits for its first token; 0: none
    cors_origins: tuple[str, ...] = ()  # browser origins allowed ("*": any); none: no CORS
    max_model_len: int | None = None  # what /v1/models reports, if known
    # /metrics needs `Authorization: Bearer <metrics_key>` when set; with tenants configured
    # and no key, /metrics is refused (it names every tenant and counts their traffic)
    metrics_key: str | None = None

    def __post_init__(self) -> None:
        if not self.model_names:
            raise ValueError("the gateway serves at least one model name")
        if self.keepalive_s < 0:
            raise ValueError(f"keepalive_s must be >= 0, got {self.keepalive_s}")


def _client_request_id(scope: Scope) -> str | None:
    value = header(scope, b"x-request-id")
    if value and len(value) <= _MAX_CLIENT_ID_CHARS and value.isprintable():
        return value
    return None


class Service(Protocol):
    """Background work that lives as long as the server (the autoscaler): started after the
    pool, stopped before it."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


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
    services: list[Service] = field(default_factory=list)
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

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{self._id_prefix}{next(self._ids):x}"

    def _cors(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        origin = header(scope, b"origin")
        allowed = self.config.cors_origins
        if origin is None or not allowed or ("*" not in allowed and origin not in allowed):
            return []
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"origin"),
                (b"access-control-expose-headers", _CORS_EXPOSED)]

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        request_id = self.new_id("chatcmpl" if path == "/v1/chat/completions" else "cmpl")
        client_id = _client_request_id(scope)
        cors = self._cors(scope)
        send = with_headers(send, [(b"x-request-id", (client_id or request_id).encode()),
                                   *cors], self.metrics.count_response)
        try:
            if method == "OPTIONS" and cors:  # a browser's CORS preflight
                await send_bytes(send, 204, b"", [
                    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                    (b"access-control-allow-headers", b"authorization, content-type, "
                     b"x-request-id, x-program-id, x-session-id"),
                    (b"access-control-max-age", b"600")])
            elif path in _GENERATE_ROUTES or path in _FORWARD_ROUTES:
                if method != "POST":
                    raise MethodNotAllowedError(f"{path} accepts POST only", allow=("POST",))
                if path in _FORWARD_ROUTES:
                    await forward_endpoint(self, path, scope, receive, send)
                else:
                    await self._generate(scope, receive, send, request_id,
                                         path == "/v1/chat/completions")
            elif path in _GET_ROUTES or path.startswith("/v1/models/"):
                if method not in ("GET", "HEAD"):
                    raise MethodNotAllowedError(f"{path} accepts GET only", allow=("GET", "HEAD"))
                await self._get(path, scope, send)
            else:
                raise NotFoundError(f"no route {method} {path}")
        except Exception as exc:  # the one exception handler: OpenAI error JSON
            await _answer_error(send, exc)

    def _check_metrics_key(self, authorization: str | None) -> None:
        key = self.config.metrics_key
        if key is None:
            if self.tenants.is_open:
                return
            raise PermissionDeniedError("/metrics is closed on a gateway with tenants: set "
                                        "[server] metrics_key and scrape with it",
                                        code="metrics_key_required")
        given = authorization[7:].strip() if authorization and \
            authorization.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise AuthenticationError("/metrics needs 'Authorization: Bearer <metrics_key>'",
                                      code="invalid_api_key")

    async def _get(self, path: str, scope: Scope, send: Send) -> None:
        if path == "/health":
            if self.is_draining:
                raise ServiceUnavailableError("draining: shutting down", code="draining")
            healthy = [r.name for r in self.pool.replicas if r.can_route(self.clock())]
            status = 200 if healthy else 503
            body = {"status": "ok" if healthy else "no healthy backend", "healthy": healthy}
            await send_bytes(send, status, json.dumps(body).encode())
        elif path == "/metrics":
            self._check_metrics_key(header(scope, b"authorization"))
            await send_bytes(send, 200, self.metrics.render(),
                             [(b"content-type", CONTENT_TYPE.encode())])
        elif path == "/version":
            await send_bytes(send, 200, json.dumps({"version": __version__}).encode())
        elif path == "/openapi.json":
            await send_bytes(send, 200, json.dumps(openapi_spec(
                has_keys=not self.tenants.is_open,
                has_cors=bool(self.config.cors_origins),
                models=self.config.model_names)).encode())
        else:  # /v1/models, /v1/models/{id}
            self.tenants.authenticate(header(scope, b"authorization"))
            data = [model_entry(name, self.config.max_model_len)
                    for name in self.config.model_names]
            if path == "/v1/models":
                await send_bytes(send, 200, json.dumps({"object": "list", "data": data}).encode())
                return
            name = path[len("/v1/models/"):]
            entry = next((d for d in data if d["id"] == name), None)
            if entry is None:
                raise NotFoundError(f"the model '{name}' does not exist; served: "
                                    f"{', '.join(self.config.model_names)}", param="model",
                                    code="model_not_found")
            await send_bytes(send, 200, json.dumps(entry).encode())

    async def _generate(self, scope: Scope, receive: Receive, send: Send, request_id: str,
                        is_chat: bool) -> None:
        if self.is_draining:
            raise ServiceUnavailableError("draining: shutting down", code="draining")
        arrival_s, created = self.clock(), int(time.time())
        tenant = self.tenants.authenticate(header(scope, b"authorization"))
        body = decode_body(await read_body(receive, self.config.max_body_bytes))
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
        parts = make_parts(self, api, arrival_s)
        self._admit(parts)
        self._enter()
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.get_running_loop().create_task(watch_disconnect(receive, task))
        outcome = "error"
        try:
            headers = self.tenants.ratelimit_headers(tenant.name, self.clock())
            rendering = Rendering(request_id=request_id, model=api.generate.model,
                                  created=created, is_chat=is_chat,
                                  include_usage=api.include_usage,
                                  continuous_usage=api.continuous_usage)
            answer = stream_answer if api.is_stream else whole_answer
            await answer(self, api, parts, send, headers, rendering, arrival_s)
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            if not watcher.done() or watcher.cancelled():
                raise
            # the client left: its task was cancelled to stop the backend; end quietly
            task.uncancel()
        finally:
            watcher.cancel()
            for part in parts:
                self._finish(part, arrival_s, outcome)
            self._leave()

    def _admit(self, parts: list[Part]) -> None:
        """Every part into admission (a slot, or the queue); on a refusal, none."""
        index = self.pool.dispatch_index
        try:
            for part in parts:
                if index is not None:
                    index.add(part.spec)
                part.ticket = self.admission.enter(part.request)
        except BaseException:
            for part in parts:
                if part.ticket is not None:
                    self.admission.release(part.ticket, None, 0)
                if index is not None:
                    index.forget(part.request.request_id)  # left without a slot
            raise

    def _finish(self, part: Part, arrival_s: float, outcome: str) -> None:
        attempt, ticket = part.attempt, part.ticket
        assert ticket is not None
        if not ticket.is_dispatched and self.pool.dispatch_index is not None:
            self.pool.dispatch_index.forget(part.request.request_id)
        usage = attempt.usage
        self.admission.release(ticket, None if usage is None else usage.prompt_tokens,
                               attempt.completion_tokens)
        label = attempt.replica.name if attempt.replica else "none"
        self.metrics.e2e_s.observe(self.clock() - arrival_s, (label,))
        self.metrics.requests.inc((ticket.tenant, outcome))
        if usage is not None:
            self.metrics.prompt_tokens.inc((ticket.tenant,), usage.prompt_tokens)
            self.metrics.completion_tokens.inc((ticket.tenant,), usage.completion_tokens)
            self.metrics.prefix_queries.inc((), usage.prompt_tokens)
            self.metrics.prefix_hits.inc((), attempt.num_cached_tokens or 0)
        if outcome == "ok":
            self.metrics.successes.inc((attempt.finish_reason or "stop",))

    def _enter(self) -> None:
        self.num_in_progress += 1
        if self._idle is not None:
            self._idle.clear()

    def _leave(self) -> None:
        self.num_in_progress -= 1
        if self.num_in_progress == 0 and self._idle is not None:
            self._idle.set()

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
                for service in self.services:
                    service.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.drain()
                for service in self.services:
                    await service.stop()
                await self.pool.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _answer_error(send: Send, exc: Exception) -> None:
    status, body, headers = error_response(exc)
    if status == 500:  # not an expected outcome: a bug, which the operator must see
        log.error("500 answered for an unexpected error: %r", exc, exc_info=exc)
    try:
        await send_bytes(send, status, body, [*JSON_HEADERS, *headers])
    except Exception:  # the response had already started: nothing more can be said
        return
