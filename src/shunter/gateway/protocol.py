"""uvicorn's httptools protocol with per-connection limits: what a client may cost before the
app ever sees its request (and while it reads the answer).

    head     request line + headers over `max_header_bytes` or `max_headers`: 431, closed.
             Counted per read while the head is incomplete (httptools would otherwise buffer an
             endless header whole), exactly once it completes; so at most the limit and one
             read are ever held.
             Not complete `header_timeout_s` after connecting or, on a kept-alive connection,
             after its first byte: 408 if any byte of it came, else closed quietly (a
             slowloris, an idle connect).
    idle     a keep-alive connection with no new request for `idle_timeout_s`: closed
             (uvicorn's own keep-alive timer, set from the config).
    body     not complete `body_timeout_s` after the head: 408, closed; the app's pending
             read sees a disconnect.
    send     the transport's buffer over its high-water mark (the client takes no bytes) for
             `send_timeout_s`: the connection is aborted; the app sees a disconnect, which
             cancels the request and so aborts the backend's work and frees its slot.
    fds      a new connection past the descriptor budget (`limits.FdBudget`): 503, closed.

No timer runs per chunk or per header: the head and body timers are set only when a read
leaves the head or body incomplete (a request that arrives in one read sets none), the send
timer only when the transport pauses writing.

At the drain deadline `end_response` ends what a connection is answering: a stream gets an
SSE error event and [DONE] (every chunked answer of this gateway is an SSE stream; whole
answers carry a content-length), a request not yet answered a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from shunter.gateway.errors import error_body
from shunter.gateway.limits import FdBudget, LimitsConfig

__all__ = ["GuardedHttpProtocol"]

log = logging.getLogger("shunter.gateway")

_REQUEST_LINE_BYTES = 16  # method, spaces, "HTTP/1.1", CRLF: about, beside the URL


class _HeadRefused(Exception):
    """Raised in a parser callback to stop parsing a head over a limit."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """One client connection, as uvicorn's, with the limits of `LimitsConfig`."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, limits: LimitsConfig,
                 fds: FdBudget) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.fds = fds
        self.is_reading_head = True  # between a message's end and the next head's end
        self.has_head_started = False  # a byte of the head being read has come
        self.head_since_s: float | None = None  # the head's clock; None while one is served
        self.num_head_bytes = 0  # of the head so far, in reads that held nothing else
        self.num_read_bytes = 0  # of the read being parsed
        self.num_heads = 0
        self.refusal: tuple[int, str] | None = None  # a head over a limit: status, message
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.send_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if not self.fds.can_accept(sock.fileno() if sock is not None else -1):
            self._answer(503, "the gateway is at its open-file limit; retry later",
                         "too_many_connections", b"retry-after: 1\r\n")
            return
        self.head_since_s = self.loop.time()
        self.head_timer = self.loop.call_at(self.head_since_s + self.limits.header_timeout_s,
                                            self._on_head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for timer in (self.head_timer, self.body_timer, self.send_timer):
            if timer is not None:
                timer.cancel()
        self.head_timer = self.body_timer = self.send_timer = None

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused: nothing more is parsed (or held)
        self._unset_keepalive_if_required()
        was_reading_head, num_heads = self.is_reading_head, self.num_heads
        self.num_read_bytes = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self.refusal is not None:
                self._answer(*self.refusal, "request_header_fields_too_large")
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        if self.is_reading_head:
            if was_reading_head and num_heads == self.num_heads:  # a read of the head only
                self.num_head_bytes += len(data)
                if self.num_head_bytes > self.limits.max_header_bytes:
                    self._answer(431, f"request headers over {self.limits.max_header_bytes} "
                                 "bytes", "request_header_fields_too_large")
                    return
            if self.head_timer is None and self.has_head_started:
                if self.head_since_s is None:  # a kept-alive connection's next head began
                    self.head_since_s = self.loop.time()
                self.head_timer = self.loop.call_at(
                    self.head_since_s + self.limits.header_timeout_s, self._on_head_timeout)
        elif self.body_timer is None:
            self.body_timer = self.loop.call_later(self.limits.body_timeout_s,
                                                   self._on_body_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.has_head_started = True

    def on_headers_complete(self) -> None:
        self.num_heads += 1
        self.is_reading_head = self.has_head_started = False
        self.head_since_s = None
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        # the head's bytes are at most those of its whole reads and of this one
        bound = self.num_head_bytes + self.num_read_bytes
        self.num_head_bytes = 0
        limits = self.limits
        if bound > limits.max_header_bytes and _head_bytes(self.url, self.headers) \
                > limits.max_header_bytes:
            self.refusal = (431, f"request headers over {limits.max_header_bytes} bytes")
            raise _HeadRefused
        if len(self.headers) > limits.max_headers:
            self.refusal = (431, f"over {limits.max_headers} request headers")
            raise _HeadRefused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.is_reading_head = True
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.is_reading_head and not self.transport.is_closing():
            # the next head's clock starts with its first byte (an idle keep-alive connection
            # is the idle timer's); if part of it came already (pipelined): now
            self.head_since_s = None
            if self.has_head_started and self.head_timer is None:
                self.head_since_s = self.loop.time()
                self.head_timer = self.loop.call_at(
                    self.head_since_s + self.limits.header_timeout_s, self._on_head_timeout)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.send_timer is None:
            self.send_timer = self.loop.call_later(self.limits.send_timeout_s,
                                                   self._on_send_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None

    def end_response(self, sse_event: bytes) -> None:
        """End what this connection is answering (the drain's deadline passed) and close it:
        a stream with `sse_event`, a request not yet answered with a 503."""
        cycle = self.cycle
        if self.transport.is_closing():
            return
        if cycle is None or cycle.response_complete:
            self.transport.close()
        elif not cycle.response_started:
            self._answer(503, "the gateway is shutting down and its drain time is over",
                         "drain_timeout", b"retry-after: 1\r\n")
        else:
            if cycle.chunked_encoding:  # an SSE stream: one last event, then the last chunk
                self.transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(sse_event), sse_event))
            self._disconnect_app()
            self.transport.close()

    def _on_head_timeout(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or self.head_since_s is None:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined request is being answered: its end restarts the clock
        if self.has_head_started:
            self._answer(408, f"request headers not received within "
                         f"{self.limits.header_timeout_s} s", "request_timeout")
        else:
            self.transport.close()

    def _on_body_timeout(self) -> None:
        self.body_timer = None
        if self.transport.is_closing():
            return
        self._answer(408, f"request body not received within {self.limits.body_timeout_s} s",
                     "request_timeout")

    def _on_send_timeout(self) -> None:
        self.send_timer = None
        log.info("aborting a connection whose client took no byte of its answer for %s s",
                 self.limits.send_timeout_s)
        self._disconnect_app()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # a reset: else the kernel keeps the unsent answer for minutes
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()  # close() would wait for the buffer to drain: never

    def _disconnect_app(self) -> None:
        """The app's request on this connection sees a disconnect: its pending read returns
        one (which cancels its work), its writes go nowhere."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
            self.flow.resume_writing()  # a write waiting on the buffer returns

    def _answer(self, status: int, message: str, code: str, headers: bytes = b"") -> None:
        """Answer `status` (OpenAI's error JSON) and close, unless an answer has started."""
        cycle = self.cycle
        is_answering = cycle is not None and cycle.response_started \
            and not cycle.response_complete
        self._disconnect_app()
        if not is_answering:
            body = error_body(message, status, code=code)
            self.transport.write(b"".join([
                STATUS_LINE[status], b"content-type: application/json\r\ncontent-length: ",
                str(len(body)).encode(), b"\r\nconnection: close\r\n", headers, b"\r\n", body]))
        self.transport.close()


def _head_bytes(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    return _REQUEST_LINE_BYTES + len(url) + sum(len(k) + len(v) + 4 for k, v in headers)
