"""A fast fake OpenAI-compatible HTTP server over `FakeModel`, on raw asyncio, for tests and the
overhead benchmark (as vLLM's own router benchmarks use a mock worker).

Raw `asyncio.Protocol` with HTTP/1.1 keep-alive: it must cost the benchmark's 2 cores as little
as possible, so that what is measured is the router in front of it. It serves POST
/v1/completions and /v1/chat/completions (streamed with chunked transfer encoding, or whole),
GET /health, /metrics (vLLM metric names) and /v1/models. `kill()` makes it die like a crashed
process: every open connection is cut mid-stream and no new one is accepted.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from shunter.backend.protocol import ChatMessage, GenerateRequest
from shunter.gateway.fake import (
    FakeModel,
    fake_context,
    fake_num_tokens,
    fake_token_ids,
    fake_word_ids,
)

__all__ = ["FakeHttpBackend"]

_MAX_HEADER_BYTES = 65_536
_MAX_PAD_BYTES = 1 << 20  # the most `fake_event_pad_bytes` a stream event carries
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error",
            503: b"Service Unavailable"}


@dataclass(slots=True, kw_only=True)
class FakeHttpBackend:
    model: FakeModel = field(default_factory=FakeModel)
    model_name: str = "fake-model"
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    fail_status: int | None = None  # answer every generation with this status
    # faults, for the chaos tests: a stream that sends this event after N tokens and stops
    # ("[1,2,3]": valid JSON of the wrong shape), one cut after its final token before
    # [DONE], one that hangs after N tokens (stall), one that never sends its first token
    bad_event_after_tokens: int | None = None
    bad_event: bytes = b"[1,2,3]"
    cut_after_final_token: bool = False
    stall_after_tokens: int | None = None
    abort_after_tokens: int | None = None  # a stream's connection is cut after N tokens
    bodies: list[dict[str, Any]] | None = None  # a list: every generation body is kept there
    num_requests: int = 0
    num_running: int = 0
    num_disconnects: int = 0  # streams whose client left before the end
    server: asyncio.base_events.Server | None = None
    connections: set[asyncio.Transport] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), host, port,
                                               backlog=4096)
        return self.server.sockets[0].getsockname()[1]

    def kill(self) -> None:
        """Die at once: stop listening and cut every connection."""
        if self.server is not None:
            self.server.close()
        for transport in list(self.connections):
            transport.abort()
        for task in list(self.tasks):
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self.tasks)
        self.kill()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    def metrics_text(self) -> bytes:
        return (f"vllm:num_requests_running{{model_name=\"{self.model_name}\"}} {self.num_running}\n"
                f"vllm:num_requests_waiting{{model_name=\"{self.model_name}\"}} 0\n"
                f"vllm:kv_cache_usage_perc{{model_name=\"{self.model_name}\"}} 0.0\n").encode()


def _request(body: dict[str, Any], is_chat: bool) -> GenerateRequest:
    messages = None
    if is_chat:
        messages = tuple(ChatMessage(m["role"], m["content"]) for m in body["messages"])
        if body.get("continue_final_message") and messages and messages[-1].role == "assistant":
            continuation, messages = messages[-1].content, messages[:-1]
            return GenerateRequest(request_id="fake", model=body["model"], messages=messages,
                                   continuation=continuation, **_sampling(body))
    prompt = body.get("prompt")
    return GenerateRequest(request_id="fake", model=body["model"], messages=messages,
                           prompt=None if is_chat else prompt if isinstance(prompt, str)
                           else tuple(prompt), **_sampling(body))


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    stop = body.get("stop") or ()
    return {"max_tokens": body.get("max_tokens"), "ignore_eos": bool(body.get("ignore_eos")),
            "stop": (stop,) if isinstance(stop, str) else tuple(stop),
            "stream": bool(body.get("stream"))}


class _Connection(asyncio.Protocol):
    __slots__ = ("backend", "buffer", "task", "transport")

    def __init__(self, backend: FakeHttpBackend) -> None:
        self.backend = backend
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.backend.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.transport is not None
        self.backend.connections.discard(self.transport)
        if self.task is not None and not self.task.done():
            self.backend.num_disconnects += 1  # as a real server: the generation stops
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEADER_BYTES:
                    self._reply(400, b"{}", close=True)
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                key, _, value = line.partition(":")
                if key.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            method, path = head[0].split(" ")[:2]
            self._handle(method, path, body)

    def _reply(self, status: int, body: bytes, *, close: bool = False,
               content_type: bytes = b"application/json") -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
                             % (status, _REASONS.get(status, b"Error"), content_type, len(body))
                             + body)
        if close:
            self.transport.close()

    def _handle(self, method: str, path: str, body: bytes) -> None:
        backend = self.backend
        if method == "GET" and path == "/health":
            self._reply(200, b"{}")
        elif method == "GET" and path == "/metrics":
            self._reply(200, backend.metrics_text(), content_type=b"text/plain")
        elif method == "GET" and path == "/v1/models":
            self._reply(200, json.dumps({"object": "list", "data": [
                {"id": backend.model_name, "object": "model"}]}).encode())
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            backend.num_requests += 1
            if backend.fail_status is not None:
                self._reply(backend.fail_status, b'{"error": {"message": "fake failure"}}')
                return
            parsed = json.loads(body)
            if backend.bodies is not None:
                backend.bodies.append(parsed)
            request = _request(parsed, path.endswith("chat/completions"))
            if request.stream or backend.first_token_delay_s or backend.token_delay_s:
                task = asyncio.get_running_loop().create_task(self._generate(request, parsed))
                self.task = task
                self.backend.tasks.add(task)
                task.add_done_callback(self.backend.tasks.discard)
            else:  # the benchmark's hot path: answer within this callback
                self._reply(200, self._whole(request, parsed))
        else:
            self._reply(404, b'{"error": {"message": "not found"}}')

    def _whole(self, request: GenerateRequest, body: dict[str, Any]) -> bytes:
        words, reason = self.backend.model.generate(request)
        text = "".join(words)
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
        if request.is_chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        num_prompt = fake_num_tokens(fake_context(request))
        usage = {"prompt_tokens": num_prompt, "completion_tokens": len(words),
                 "total_tokens": num_prompt + len(words)}
        kind = "chat.completion" if request.is_chat else "text_completion"
        return json.dumps({"id": "fake", "object": kind, "created": 0, "model": body["model"],
                           "choices": [choice], "usage": usage}).encode()

    async def _generate(self, request: GenerateRequest, body: dict[str, Any]) -> None:
        backend, transport = self.backend, self.transport
        assert transport is not None
        backend.num_running += 1
        try:
            if backend.first_token_delay_s:
                await asyncio.sleep(backend.first_token_delay_s)
            if not request.stream:  # the whole answer takes as long as its stream would
                words, _ = backend.model.generate(request)
                if len(words) > 1 and backend.token_delay_s:
                    await asyncio.sleep((len(words) - 1) * backend.token_delay_s)
                if not transport.is_closing():
                    self._reply(200, self._whole(request, body))
                return
            transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                            b"transfer-encoding: chunked\r\n\r\n")
            await self._stream(request, body)
        finally:
            backend.num_running -= 1

    async def _stream(self, request: GenerateRequest, body: dict[str, Any]) -> None:
        transport = self.transport
        assert transport is not None
        words, reason = self.backend.model.generate(request)
        context = fake_context(request)
        num_prompt = fake_num_tokens(context)
        kind = "chat.completion.chunk" if request.is_chat else "text_completion"
        head = {"id": "fake", "object": kind, "created": 0, "model": body["model"]}
        # a client may ask for heavy events: the chaos benchmark's never-reading client, whose
        # stream must outgrow the kernel's socket buffers within a second
        pad = body.get("fake_event_pad_bytes")
        if isinstance(pad, int) and pad > 0:
            head["pad"] = "x" * min(pad, _MAX_PAD_BYTES)
        with_ids = bool(body.get("return_token_ids"))  # as vLLM's: prompt ids first, then each
        if request.is_chat:  # as vLLM: a role-only first event
            role = {**head, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                               "content": ""},
                                         "finish_reason": None}]}
            if with_ids:
                role["prompt_token_ids"] = list(fake_token_ids(context))
            _write_chunk(transport, b"data: " + json.dumps(role).encode() + b"\n\n")
        backend = self.backend
        for i, word in enumerate(words, start=1):
            if i > 1 and backend.token_delay_s:
                await asyncio.sleep(backend.token_delay_s)
            if transport.is_closing():
                backend.num_disconnects += 1
                return
            if backend.stall_after_tokens is not None and i > backend.stall_after_tokens:
                await asyncio.sleep(3600)  # hung: only the gateway's stall timeout ends it
            if backend.bad_event_after_tokens is not None and i > backend.bad_event_after_tokens:
                _write_chunk(transport, b"data: " + backend.bad_event + b"\n\n")
                transport.close()
                return
            if backend.abort_after_tokens is not None and i > backend.abort_after_tokens:
                transport.abort()  # the server died mid-stream
                return
            delta = {"delta": {"content": word}} if request.is_chat else {"text": word}
            choice = {"index": 0, **delta, "finish_reason": reason if i == len(words) else None}
            if with_ids:
                choice["token_ids"] = list(fake_word_ids(word))
                if i == 1 and not request.is_chat:
                    choice["prompt_token_ids"] = list(fake_token_ids(context))
            event = {**head, "choices": [choice],
                     "usage": {"prompt_tokens": num_prompt, "completion_tokens": i,
                               "total_tokens": num_prompt + i}}
            _write_chunk(transport, b"data: " + json.dumps(event).encode() + b"\n\n")
        if backend.cut_after_final_token:
            transport.abort()  # died after its last token, before [DONE]
            return
        _write_chunk(transport, b"data: [DONE]\n\n")
        transport.write(b"0\r\n\r\n")


def _write_chunk(transport: asyncio.Transport, data: bytes) -> None:
    transport.write(b"%x\r\n%s\r\n" % (len(data), data))
