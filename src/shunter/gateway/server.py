"""Serve a `GatewayApp` with uvicorn on uvloop + httptools, and drain on shutdown.

Why this stack, on 2 cores: uvicorn's httptools protocol (llhttp in C) and uvloop (libuv) are
the fastest pure-Python-deployable HTTP/1.1 server path; the app is raw ASGI (no framework
layer, `http.py`), and backends are reached through one pooled aiohttp session each
(`remote.py`). One process, one event loop: the router, admission queue and in-flight counts
are plain objects, never shared across processes, which is what keeps routing decisions fresh.

Each connection runs `protocol.GuardedHttpProtocol`, uvicorn's httptools protocol with the
[limits] table's bounds on header size and count, header, idle, body and send times, and the
process's file-descriptor budget (`limits.FdBudget`, counted once a second here). `serve`
raises the soft open-file limit to the hard one first.

On SIGINT/SIGTERM the app first refuses new requests (503, /health too), uvicorn stops
accepting connections and waits up to `drain_timeout_s` for those in progress; streams finish.
What is still running then is ended: a stream with an SSE error event (`drain_timeout`) and
[DONE], a request not yet answered with a 503; its work is cancelled as if the client had
left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import uvicorn

from shunter.gateway.app import GatewayApp
from shunter.gateway.errors import error_body
from shunter.gateway.limits import FdBudget, LimitsConfig, raise_fd_limit, soft_fd_limit
from shunter.gateway.protocol import GuardedHttpProtocol

__all__ = ["DRAIN_GRACE_S", "FD_POLL_TICKS", "DrainingServer", "make_server", "serve"]

# uvicorn's own shutdown deadline trails the gateway's, which ends the responses itself first
DRAIN_GRACE_S = 2.0
FD_POLL_TICKS = 10  # uvicorn ticks every 0.1 s: count the descriptors once a second


class DrainingServer(uvicorn.Server):
    """A uvicorn server that tells the app to drain as soon as shutdown is asked for, ends
    what still runs at the drain's deadline, and polls the descriptor budget."""

    def __init__(self, config: uvicorn.Config, app: GatewayApp, fds: FdBudget) -> None:
        super().__init__(config)
        self.gateway = app
        self.fds = fds

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.gateway.is_draining = True
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if counter % FD_POLL_TICKS == 0:
            self.fds.poll()
        return await super().on_tick(counter)

    async def shutdown(self, sockets: Any = None) -> None:
        deadline = asyncio.get_running_loop().call_later(
            self.gateway.config.drain_timeout_s, self.end_responses)
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()

    def end_responses(self) -> None:
        """The drain's time is over: end every answer still running."""
        timeout_s = self.gateway.config.drain_timeout_s
        event = b"data: " + error_body(
            f"the gateway is shutting down and its drain time ({timeout_s} s) is over; the "
            "answer is incomplete", 503, code="drain_timeout") + b"\n\ndata: [DONE]\n\n"
        for connection in list(self.server_state.connections):
            if isinstance(connection, GuardedHttpProtocol):
                connection.end_response(event)


def make_server(app: GatewayApp, host: str, port: int, *, limits: LimitsConfig | None = None,
                max_fds: int | None = None, log_level: str = "warning",
                access_log: bool = False) -> DrainingServer:
    """`max_fds`: the descriptor limit to budget against (default: the soft RLIMIT_NOFILE)."""
    limits = limits or LimitsConfig()
    fds = FdBudget(max_fds=max_fds or soft_fd_limit(), warn_fraction=limits.fd_warn_fraction,
                   refuse_fraction=limits.fd_refuse_fraction)
    protocol = functools.partial(GuardedHttpProtocol, limits=limits, fds=fds)
    config = uvicorn.Config(
        app, host=host, port=port, loop="uvloop", http=protocol,  # type: ignore[arg-type]
        lifespan="on", log_level=log_level, access_log=access_log, backlog=4096,
        limit_concurrency=None, timeout_keep_alive=limits.idle_timeout_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=app.config.drain_timeout_s + DRAIN_GRACE_S,  # type: ignore[arg-type]
        proxy_headers=False)  # the app never reads scope["client"]: skip a middleware per request
    return DrainingServer(config, app, fds)


def serve(app: GatewayApp, host: str, port: int, **kwargs: Any) -> None:
    """Run until SIGINT/SIGTERM, then drain (uvicorn installs the uvloop loop itself)."""
    raise_fd_limit()
    server = make_server(app, host, port, **kwargs)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
