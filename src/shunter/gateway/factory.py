"""Assemble a `GatewayApp` from its configs and already-built backend clients."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shunter.gateway.admission import AdmissionConfig, AdmissionController
from shunter.gateway.app import AppConfig, GatewayApp
from shunter.gateway.breaker import BreakerConfig, CircuitBreaker
from shunter.gateway.client import EngineClient
from shunter.gateway.metrics import GatewayMetrics, Gauge
from shunter.gateway.pool import PoolConfig, ReplicaPool
from shunter.gateway.replica import Replica
from shunter.gateway.tenant import TenantConfig, TenantTable
from shunter.router.registry import make_router

__all__ = ["BackendSlot", "GatewayParts", "build_app"]

DEFAULT_MAX_CONCURRENCY = 256  # vLLM's default max_num_seqs: beyond it a backend only queues


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendSlot:
    """A built backend client with the gateway's settings for it."""

    name: str
    client: EngineClient
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_num_seqs: int | None = None

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"backend {self.name}: max_concurrency must be >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayParts:
    app: AppConfig
    router: str = "cost"
    router_params: dict[str, Any] = field(default_factory=dict)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    tenants: tuple[TenantConfig, ...] = ()


def build_app(parts: GatewayParts, backends: list[BackendSlot],
              clock: Callable[[], float] = time.monotonic) -> GatewayApp:
    """Wire configs and clients into an app; bad names or settings raise ValueError."""
    if not backends:
        raise ValueError("the gateway needs at least one backend")
    names = [b.name for b in backends]
    if len(set(names)) != len(names):
        raise ValueError(f"backend names must be unique, got {names}")
    metrics = GatewayMetrics()
    replicas = [Replica(replica_id=i, name=b.name, client=b.client,
                        breaker=CircuitBreaker(parts.breaker), max_concurrency=b.max_concurrency,
                        max_num_seqs=b.max_num_seqs) for i, b in enumerate(backends)]
    pool = ReplicaPool(replicas, make_router(parts.router, **parts.router_params), parts.pool,
                       metrics, clock)
    tenants = TenantTable.build(list(parts.tenants), clock())
    admission = AdmissionController(parts.admission, tenants, pool.capacity, metrics, clock)
    pool.on_capacity = admission.dispatch_waiting
    metrics.gauges.append(Gauge(
        "shunter_gateway_queued", "Requests waiting in the gateway's fair queue, per tenant.",
        ("tenant",), lambda: [((t,), float(len(q))) for t, q in admission.queues.items()]))
    return GatewayApp(parts.app, pool, admission, tenants, metrics, clock)


