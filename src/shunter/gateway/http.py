"""Small raw-ASGI helpers: read a bounded body, answer JSON, watch for a client leaving.

The gateway speaks ASGI directly instead of through a framework: on 2 cores the per-request
cost of routing tables, request objects and middleware stacks is the overhead we are measured
on, and the gateway has six routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from shunter.gateway.errors import PayloadTooLargeError

__all__ = ["JSON_HEADERS", "SSE_HEADERS", "Receive", "Scope", "Send", "header", "read_body",
           "send_bytes", "watch_disconnect"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case), decoded as latin-1."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(receive: Receive, max_bytes: int) -> bytes:
    """The whole request body; PayloadTooLargeError past `max_bytes`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError("client disconnected while sending its body")
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
