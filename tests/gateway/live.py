"""A real gateway (uvicorn on 127.0.0.1, a random port) over fake HTTP backends, on a thread.

Everything runs on one event loop in a background thread, so a test can drive it with the
blocking `openai` client and reach into the loop (kill a backend) with `call`. Always stopped,
bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from shunter.backend.protocol import EngineClient
from shunter.gateway.admission import AdmissionConfig
from shunter.gateway.app import AppConfig, GatewayApp
from shunter.gateway.factory import GatewayParts, build_app
from shunter.gateway.fake_server import FakeHttpBackend
from shunter.gateway.limits import LimitsConfig
from shunter.gateway.pool import PoolConfig
from shunter.gateway.remote import RemoteConfig, RemoteEngineClient
from shunter.gateway.replica import BackendSlot
from shunter.gateway.server import DrainingServer, make_server

MODEL = "fake-model"
START_TIMEOUT_S = 10.0


@dataclass(slots=True)
class LiveStack:
    loop: asyncio.AbstractEventLoop
    app: GatewayApp
    server: DrainingServer
    backends: list[FakeHttpBackend]
    port: int
    thread: threading.Thread
    task: Any = field(default=None)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def call(self, fn: Callable[[], Any], timeout_s: float = 5.0) -> Any:
        """Run `fn` on the stack's loop and return its result."""
        async def wrapper() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout_s)


def _free_socket(sndbuf_bytes: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf_bytes is not None:  # inherited by accepted sockets: a client that does not read
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf_bytes)  # fills it soon
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def live_gateway(num_backends: int = 2, *, router: str = "round_robin",
                 backend_kwargs: dict[str, Any] | None = None,
                 clients: list[tuple[str, EngineClient]] | None = None,
                 model_names: tuple[str, ...] = (MODEL,), drain_timeout_s: float = 5.0,
                 limits: LimitsConfig | None = None, admission: AdmissionConfig | None = None,
                 max_concurrency: int | None = None, max_fds: int | None = None,
                 sndbuf_bytes: int | None = None) -> Iterator[LiveStack]:
    """`limits`: the connection limits (default: the config's); `max_concurrency`: each
    backend's slots; `max_fds`: the descriptor limit the gateway budgets against (default:
    the process's); `sndbuf_bytes`: the kernel send buffer of the gateway's client sockets."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="live-gateway", daemon=True)
    thread.start()
    backends = [FakeHttpBackend(model_name=model_names[0], **(backend_kwargs or {}))
                for _ in range(0 if clients else num_backends)]

    async def build() -> tuple[GatewayApp, list[int]]:
        ports = [await b.start() for b in backends]
        sizes = {} if max_concurrency is None else {"max_concurrency": max_concurrency}
        slots = [BackendSlot(name=f"r{i}", client=RemoteEngineClient(RemoteConfig(
                     url=f"http://127.0.0.1:{p}")), **sizes) for i, p in enumerate(ports)]
        slots += [BackendSlot(name=name, client=c) for name, c in clients or []]
        parts = GatewayParts(app=AppConfig(model_names=model_names,
                                           drain_timeout_s=drain_timeout_s),
                             router=router, pool=PoolConfig(health_interval_s=0.2),
                             admission=admission or AdmissionConfig())
        return build_app(parts, slots), ports

    try:
        app, _ = asyncio.run_coroutine_threadsafe(build(), loop).result(START_TIMEOUT_S)
        sock = _free_socket(sndbuf_bytes)
        server = make_server(app, "127.0.0.1", sock.getsockname()[1],
                             limits=limits or LimitsConfig(), max_fds=max_fds)
        stack = LiveStack(loop, app, server, backends, sock.getsockname()[1], thread)
        stack.task = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), loop)
        stack.call(lambda: _wait_started(server), START_TIMEOUT_S)
        yield stack
    finally:
        with contextlib.suppress(Exception):
            stack.server.should_exit = True
            stack.task.result(15)
        for b in backends:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(b.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def _wait_started(server: DrainingServer) -> None:
    for _ in range(200):
        if server.started:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("gateway did not start")
