"""A minimal keep-alive HTTP/1.1 client for one plain-http backend: POST a body, get the answer
whole (`post`) or as it comes (`stream`).

Why not aiohttp for these calls: completions, whole and streamed, are the gateway's hottest
path, and aiohttp's request machinery (URL building, payload objects, response objects, stream
readers, timers, traces) cost about as much CPU per request as the rest of the gateway together
on the benchmark's 2 cores. This is an `asyncio.Protocol` over httptools' C parser (llhttp,
already what uvicorn parses requests with): one write per request, one future per answer or,
for a stream, per network read that finds nothing buffered. Health and load reads stay on
aiohttp (`remote.py`).

A connection is reused only after a complete answer that allows keep-alive (a stream left after
its last event goes back to the pool when the answer's end arrives). A request that is
cancelled or fails, or a stream closed before its end, closes its connection, which is how the
backend learns to abort it. A pooled
connection the server closed while idle is dropped; a request whose reused connection dies
before any byte of the answer arrived is sent once more on a fresh connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httptools

__all__ = ["H1Client", "H1Stream"]

_T = TypeVar("_T")


class _Connection(asyncio.Protocol):
    __slots__ = ("_body", "_loop", "_parser", "_transport", "_waiter", "got_bytes", "is_closed",
                 "is_streaming", "keep_alive", "on_idle", "stream")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Any] | None = None
        self._body: list[bytes] = []
        self.got_bytes = False
        self.is_closed = False
        self.keep_alive = False
        self.is_streaming = False  # the answer's body goes to `stream` as it comes
        self.stream: H1Stream | None = None
        # a stream left after its last event: the pool takes the connection back at its end
        self.on_idle: Callable[[_Connection], None] | None = None

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
    def on_headers_complete(self) -> None:
        if self.is_streaming:  # the stream's head: its status is known
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.stream is not None:
            self.stream.feed(body)
        elif not self.is_streaming:
            self._body.append(body)
        # (else: what follows a stream's last event, read by no one)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        if self.is_streaming:
            self.is_streaming = False
            stream, self.stream = self.stream, None
            if stream is not None:
                stream.end(None)
            on_idle, self.on_idle = self.on_idle, None
            if on_idle is not None:
                on_idle(self)
            return
        body = b"".join(self._body)
        self._body = []
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), body))

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.end(exc)
        self.on_idle = None

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

    async def open_stream(self, data: bytes, timeout_s: float) -> H1Stream:
        """Send a request; the answer's status as soon as its head is in, its body as an
        `H1Stream` (no timer runs while the body streams: see `H1Stream.read`)."""
        assert self._waiter is None and self._transport is not None
        self.got_bytes = self.keep_alive = False
        self.is_streaming = True
        stream = self.stream = H1Stream(self, timeout_s)
        waiter = self._waiter = self._loop.create_future()
        self._transport.write(data)
        timer = self._loop.call_later(timeout_s, self._on_timeout)
        try:
            stream.status = await waiter
        finally:
            timer.cancel()
        return stream

    def close(self) -> None:
        self.is_closed = True
        if self._transport is not None:
            self._transport.close()


class H1Stream:
    """An answer's body as it arrives. `read` returns what came since the last call (b"" at
    the end); `release` gives the connection back: to the pool once the answer is whole,
    else closed (the backend's cue to abort)."""

    __slots__ = ("_conn", "_error", "_is_done", "_is_released", "_loop", "_pieces", "_pool",
                 "_timeout_s", "_waiter", "status")

    def __init__(self, conn: _Connection, timeout_s: float) -> None:
        self._conn = conn
        self._loop = conn._loop
        self._timeout_s = timeout_s
        self._pieces: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._is_done = False
        self._error: BaseException | None = None
        self._is_released = False
        self._pool: list[_Connection] | None = None
        self.status = 0

    # the connection's side
    def feed(self, data: bytes) -> None:
        self._pieces.append(data)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def end(self, exc: BaseException | None) -> None:
        self._is_done = True
        self._error = exc
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # the reader's side
    async def read(self) -> bytes:
        """The body bytes that came since the last read; b"" once the answer is whole.
        ConnectionError if the connection dies first, TimeoutError after `timeout_s` with no
        byte (one timer per wait that finds nothing buffered)."""
        while not self._pieces:
            if self._is_done:
                if self._error is not None:
                    raise self._error
                return b""
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(self._timeout_s, self._on_timeout, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
        pieces, self._pieces = self._pieces, []
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _on_timeout(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError(f"no byte from the backend for {self._timeout_s} "
                                              "s"))

    def release(self) -> None:
        """Done with the answer: the connection goes back to the pool if the answer is whole
        (or when its end comes, if only its last event was read), else it is closed."""
        conn, pool = self._conn, self._pool
        if self._is_released:
            return
        self._is_released = True
        if pool is None or conn.is_closed:
            conn.close()
        elif self._is_done and self._error is None:
            if conn.keep_alive:
                pool.append(conn)
            else:
                conn.close()
        else:
            conn.close()

    def release_at_end(self) -> None:
        """The last event was read: the connection returns to the pool when the answer's end
        (the chunked body's last chunk) arrives, if it allows keep-alive."""
        conn, pool = self._conn, self._pool
        if self._is_released or self._is_done or pool is None or conn.is_closed:
            self.release()
            return
        self._is_released = True
        conn.stream = None  # nothing more is read from it

        def back(c: _Connection) -> None:
            if c.keep_alive and not c.is_closed:
                pool.append(c)
            else:
                c.close()
        conn.on_idle = back


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
        return await self._exchange(self._post_bytes(path, body, content_type), self._whole)

    async def stream(self, path: str, body: bytes,
                     content_type: str = "application/json") -> H1Stream:
        """POST `path` and return its answer's stream once the head is in (status known).
        The caller must `release` (or `release_at_end`) it. Raises OSError, TimeoutError."""
        return await self._exchange(self._post_bytes(path, body, content_type), self._open)

    def _post_bytes(self, path: str, body: bytes, content_type: str) -> bytes:
        return (f"POST {self._prefix}{path.lstrip('/')} HTTP/1.1\r\n{self._head}"
                f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
                ).encode("latin-1") + body

    async def _exchange(self, data: bytes,
                        send: Callable[[_Connection, bytes], Awaitable[_T]]) -> _T:
        """`send(conn, data)` on a pooled connection, or on a fresh one if there is none or
        the pooled one died before any byte of the answer (the server dropped it while idle,
        as we reused it: nothing reached it). A failed send closes its connection."""
        conn = self._pooled()
        if conn is not None:
            try:
                return await self._send_on(conn, data, send)
            except ConnectionError:
                if conn.got_bytes:
                    raise
        return await self._send_on(await self._connect(), data, send)

    @staticmethod
    async def _send_on(conn: _Connection, data: bytes,
                       send: Callable[[_Connection, bytes], Awaitable[_T]]) -> _T:
        try:
            return await send(conn, data)
        except BaseException:
            conn.close()
            raise

    async def _whole(self, conn: _Connection, data: bytes) -> tuple[int, bytes]:
        answer = await conn.request(data, self.read_timeout_s)
        if conn.keep_alive and not conn.is_closed:
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    async def _open(self, conn: _Connection, data: bytes) -> H1Stream:
        stream = await conn.open_stream(data, self.read_timeout_s)
        stream._pool = self._idle  # `release` gives the connection back
        return stream

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
