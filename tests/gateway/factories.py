"""Factories for gateway tests: an app over fake backends, driven in-process through ASGI."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

httpx = pytest.importorskip("httpx")

from shunter.gateway.admission import AdmissionConfig  # noqa: E402
from shunter.gateway.app import AppConfig, GatewayApp  # noqa: E402
from shunter.gateway.factory import GatewayParts, build_app  # noqa: E402
from shunter.gateway.fake import FakeEngineClient  # noqa: E402
from shunter.gateway.replica import BackendSlot  # noqa: E402
from shunter.gateway.tenant import TenantConfig  # noqa: E402

MODEL = "fake-model"


@dataclass(slots=True)
class ManualClock:
    now_s: float = 1000.0

    def __call__(self) -> float:
        return self.now_s


def make_app(num_backends: int = 2, *, router: str = "round_robin", max_concurrency: int = 64,
             tenants: tuple[TenantConfig, ...] = (), admission: AdmissionConfig | None = None,
             clock=None, **app_fields) -> tuple[GatewayApp, list[FakeEngineClient]]:
    fakes = [FakeEngineClient() for _ in range(num_backends)]
    slots = [BackendSlot(name=f"r{i}", client=f, max_concurrency=max_concurrency)
             for i, f in enumerate(fakes)]
    parts = GatewayParts(app=AppConfig(model_names=(MODEL,), **app_fields), router=router,
                         router_params={"seed": 0} if router in ("cost", "random") else {},
                         tenants=tenants, admission=admission or AdmissionConfig())
    app = build_app(parts, slots, **({"clock": clock} if clock else {}))
    return app, fakes


def asgi_client(app: GatewayApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))
