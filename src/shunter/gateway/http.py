"""Small raw-ASGI helpers: read a bounded body, answer JSON, watch for a client leaving.

The gateway speaks ASGI directly instead of through a framework: on 2 cores the per-request
cost of routing tables, request objects and middleware stacks is the overhead we are measured
on, and the gateway has six routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from shunter.gateway.errors import ClientDisconnectedError, PayloadTooLargeError

__all__ = ["JSON_HEADERS", "KEEP_ALIVE", "SSE_HEADERS", "Receive", "Scope", "Send", "SseWriter",
           "header", "read_body", "send_bytes", "watch_disconnect", "with_headers"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]
KEEP_ALIVE = b": keep-alive\n\n"  # an SSE comment: clients ignore it, proxies see traffic


def with_headers(send: Send, headers: list[tuple[bytes, bytes]],
                 on_status: Callable[[int], None] | None = None) -> Send:
    """`send` adding `headers` to the response's start (and telling `on_status` its status)."""
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *headers]
            if on_status is not None:
                on_status(message["status"])
        await send(message)
    return wrapped


class SseWriter:
    """An SSE response: its headers at once, then events; a keep-alive comment every
    `interval_s` until the first event, so that a request waiting in the gateway's queue or in
    a long prefill keeps its connection (and every proxy on the way) alive."""

    __slots__ = ("_beat", "_lock", "_send", "interval_s")

    def __init__(self, send: Send, interval_s: float) -> None:
        self._send = send
        self.interval_s = interval_s
        self._lock: asyncio.Lock | None = asyncio.Lock()
        self._beat: asyncio.Task[None] | None = None

    async def start(self, headers: list[tuple[bytes, bytes]]) -> None:
        await self._send({"type": "http.response.start", "status": 200,
                          "headers": [*SSE_HEADERS, *headers]})
        if self.interval_s > 0:
            self._beat = asyncio.get_running_loop().create_task(self._beats())

    async def _beats(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            assert self._lock is not None
            async with self._lock:
                await self._send({"type": "http.response.body", "body": KEEP_ALIVE,
                                  "more_body": True})

    async def write(self, data: bytes, *, is_last: bool = False, is_waiting: bool = False) -> None:
        """One or more events; `is_last` ends the response. Keep-alives stop at the first
        write that is not `is_waiting` (an event sent while the request still waits)."""
        message = {"type": "http.response.body", "body": data, "more_body": not is_last}
        if self._lock is not None:
            async with self._lock:  # the beat sends only under the lock: it is not mid-send
                if not is_waiting:
                    self.stop_beats()
                await self._send(message)
            if not is_waiting:
                self._lock = None
            return
        await self._send(message)

    def stop_beats(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case), decoded as latin-1."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(receive: Receive, max_bytes: int) -> bytes:
    """The whole request body; PayloadTooLargeError past `max_bytes`, ClientDisconnectedError
    if the client leaves first (or the connection layer cut it off: a body too slow)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError("the client disconnected while sending its body",
                                          code="client_disconnected")
        body = message.get("body", b"")
        size += len(body)
        if size > max_bytes:
            raise PayloadTooLargeError(f"request body over {max_bytes} bytes",
                                       code="payload_too_large")
        chunks.append(body)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_bytes(send: Send, status: int, body: bytes,
                     headers: list[tuple[bytes, bytes]] = JSON_HEADERS) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def watch_disconnect(receive: Receive, task: asyncio.Task[Any]) -> None:
    """Cancel `task` when the client disconnects (its request body was already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return
