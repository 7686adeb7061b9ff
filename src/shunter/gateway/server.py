"""Serve a `GatewayApp` with uvicorn on uvloop + httptools, and drain on shutdown.

Why this stack, on 2 cores: uvicorn's httptools protocol (llhttp in C) and uvloop (libuv) are
the fastest pure-Python-deployable HTTP/1.1 server path; the app is raw ASGI (no framework
layer, `http.py`), and backends are reached through one pooled aiohttp session each
(`remote.py`). One process, one event loop: the router, admission queue and in-flight counts
are plain objects, never shared across processes, which is what keeps routing decisions fresh.

On SIGINT/SIGTERM the app first refuses new requests (503, /health too), uvicorn stops
accepting connections and waits up to `drain_timeout_s` for those in progress; streams finish.
"""

from __future__ import annotations

import contextlib
from typing import Any

import uvicorn

from shunter.gateway.app import GatewayApp

__all__ = ["DrainingServer", "make_server", "serve"]


class DrainingServer(uvicorn.Server):
    """A uvicorn server that tells the app to drain as soon as shutdown is asked for."""

    def __init__(self, config: uvicorn.Config, app: GatewayApp) -> None:
        super().__init__(config)
        self.gateway = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.gateway.is_draining = True
        super().handle_exit(sig, frame)


def make_server(app: GatewayApp, host: str, port: int, *, log_level: str = "warning",
                access_log: bool = False) -> DrainingServer:
    config = uvicorn.Config(
        app, host=host, port=port, loop="uvloop", http="httptools", lifespan="on",
        log_level=log_level, access_log=access_log, backlog=4096, limit_concurrency=None,
        timeout_keep_alive=30, timeout_graceful_shutdown=app.config.drain_timeout_s,
        proxy_headers=False)  # the app never reads scope["client"]: skip a middleware per request
    return DrainingServer(config, app)


def serve(app: GatewayApp, host: str, port: int, **kwargs: Any) -> None:
    """Run until SIGINT/SIGTERM, then drain (uvicorn installs the uvloop loop itself)."""
    server = make_server(app, host, port, **kwargs)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
