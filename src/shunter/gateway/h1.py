"""A minimal keep-alive HTTP/1.1 client for one plain-http backend: POST a body, get the answer.

Why not aiohttp for this one call: a non-streaming completion is the gateway's hottest path, and
aiohttp's request machinery (URL building, payload objects, response objects, timers, traces)
cost about as much CPU per request as the rest of the gateway together on the benchmark's 2
cores. This is an `asyncio.Protocol` over httptools' C parser (llhttp, already what uvicorn
parses requests with): one write per request, one future per answer. Streams, health and load
reads stay on aiohttp (`remote.py`).

A connection is reused only after a complete answer that allows keep-alive. A request that is
cancelled or fails closes its connection, which is how the backend learns to abort it. A pooled
connection the server closed while idle is dropped; a request whose reused connection dies
before any byte of the answer arrived is sent once more on a fresh connection.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httptools

__all__ = ["H1Client"]


class _Connection(asyncio.Protocol):
    __slots__ = ("_body", "_loop", "_parser", "_transport", "_waiter", "got_bytes", "is_closed",
                 "keep_alive")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self.got_bytes = False
        self.is_closed = False
        self.keep_alive = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        self._fail(exc or ConnectionResetError("the backend closed the connection"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        body = b"".join(self._body)
        self._body = []
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), body))

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _on_timeout(self) -> None:
        self._fail(TimeoutError("no complete answer from the backend in time"))
        self.close()

    async def request(self, data: bytes, timeout_s: float) -> tuple[int, bytes]:
        assert self._waiter is None and self._transport is not None
        self.got_bytes = self.keep_alive = False
        waiter = self._waiter = self._loop.create_future()
        self._transport.write(data)
        timer = self._loop.call_later(timeout_s, self._on_timeout)
        try:
            return await waiter
        finally:
            timer.cancel()

    def close(self) -> None:
        self.is_closed = True
        if self._transport is not None:
            self._transport.close()


class H1Client:
    """POSTs to one `http://` base URL over pooled keep-alive connections."""

    __slots__ = ("_authority", "_head", "_host", "_idle", "_port", "_prefix", "connect_timeout_s",
                 "read_timeout_s")

    def __init__(self, url: str, *, headers: dict[str, str] | None = None,
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 600.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"H1Client speaks plain http://host[:port] only, got {url!r}")
        self._host, self._port = parts.hostname, parts.port or 80
        self._authority = parts.netloc.rpartition("@")[2]
        self._prefix = parts.path.rstrip("/") + "/"
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"host: {self._authority}\r\n{extra}"
        self._idle: list[_Connection] = []
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s

    async def post(self, path: str, body: bytes,
                   content_type: str = "application/json") -> tuple[int, bytes]:
        """(status, body) of POST `path` (relative to the base URL). Raises OSError, TimeoutError."""
        data = (f"POST {self._prefix}{path.lstrip('/')} HTTP/1.1\r\n{self._head}"
                f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
                ).encode("latin-1") + body
        conn = self._pooled()
        if conn is not None:
            try:
                return await self._send(conn, data)
            except ConnectionError:
                if conn.got_bytes:
                    raise
                # the server dropped the idle connection as we reused it: nothing reached it
        return await self._send(await self._connect(), data)

    async def _send(self, conn: _Connection, data: bytes) -> tuple[int, bytes]:
        try:
            answer = await conn.request(data, self.read_timeout_s)
        except BaseException:
            conn.close()
            raise
        if conn.keep_alive and not conn.is_closed:
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    def _pooled(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_closed:
                return conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(loop), self._host, self._port),
            self.connect_timeout_s)
        return conn

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
