"""Assemble a `GatewayApp`: backend clients from their configs (`build_backends`), then the app
from its configs and those clients (`build_app`).

In-process engine backends (`kind = "engine"`) come from `shunter.engine.backend`, which the
gateway may not import: the composition root passes a maker for them (`EngineMaker`). So too
for a backend's speed from its `profile` file, which the simulator's cost model reads
(`SpeedLoader`).

A `kind = "vllm"` backend is a vLLM server the gateway starts itself (`supervisor.py`), then
reaches as a remote one (`SupervisedEngineClient`, resuming by tokens); closing the client stops
the server. `build_backends` starts them all at once and waits for every one to be healthy.

In-process engines that expose their KV-cache events (`KvEventSource`) and whose config says
`exact_prefix` feed this gateway's exact prefix index directly, on its loop, when its router
reads one (no socket: their history is complete from their empty start); with `kv_events_publish` they also publish them on ZMQ
in vLLM's format, for a gateway in front of this one.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from shunter.backend.protocol import EngineClient
from shunter.core.kv import events as kv
from shunter.core.predict.interface import Predictor
from shunter.core.sched.gateway_queue import GatewayQueue
from shunter.core.sched.policy import Policy, PrefixAwarePolicy
from shunter.core.sched.registry import POLICIES, make_policy
from shunter.errors import ConfigError
from shunter.gateway.admission import AdmissionConfig, AdmissionController
from shunter.gateway.app import AppConfig, GatewayApp
from shunter.gateway.breaker import BreakerConfig
from shunter.gateway.config import BackendConfig, default_vllm_python
from shunter.gateway.fake import FakeEngineClient, FakeModel
from shunter.gateway.kv_endpoints import replica_endpoint
from shunter.gateway.kv_events import KvEventSubscriber
from shunter.gateway.metrics import GatewayMetrics, Gauge
from shunter.gateway.pool import PoolConfig, ReplicaPool
from shunter.gateway.remote import RemoteConfig, RemoteEngineClient
from shunter.gateway.replica import BackendSlot, Replica
from shunter.gateway.settings import DEFAULT_ENGINE_POLICY, DEFAULT_GATEWAY_POLICY
from shunter.gateway.speed import SpeedModel
from shunter.gateway.supervisor import (
    ProcessSupervisor,
    VllmLaunch,
    free_port,
    vllm_launch_command,
    vllm_launch_env,
)
from shunter.gateway.tenant import TenantConfig, TenantTable
from shunter.gateway.vllm_metrics import VllmSeries
from shunter.router.exact_index import (
    AllBlocksCleared,
    BlockEvent,
    BlocksRemoved,
    BlocksStored,
    ExactPrefixIndex,
)
from shunter.router.interface import Router, live_refusal
from shunter.router.prefix_index import DispatchIndex, PrefixIndex
from shunter.router.registry import make_router

__all__ = ["EngineMaker", "GatewayParts", "KvEventSource", "SpeedLoader",
           "SupervisedEngineClient", "build_app", "build_backends", "gateway_policy",
           "stop_supervised", "vllm_supervisor"]

@runtime_checkable
class KvEventSource(Protocol):
    """An in-process engine replica whose KV-cache events (`core/kv/events.py`) the gateway
    reads or has published; both are set up before it starts."""

    kv_block_size: int | None  # its KV block size, the events' unit

    def publish_kv_events(self, endpoint: str, replay_endpoint: str | None = None) -> None:
        """Publish its events on ZMQ at `endpoint` (bound), as vLLM does; ValueError if not."""

    def stop_kv_events(self) -> None:
        """Stop publishing (closes the sockets)."""

    def feed_kv_events(self, on_events: Callable[[list[kv.KvEvent]], None]) -> None:
        """Call `on_events` with each engine step's events, on the loop that starts it."""


# (backend config, served model) -> the in-process replicas, each with its max_num_seqs
EngineMaker = Callable[[BackendConfig, str], Sequence[tuple[EngineClient, int]]]
# a backend config with a `profile` -> its speeds (ConfigError naming the file if unreadable)
SpeedLoader = Callable[[BackendConfig], SpeedModel]


def _no_engines(backend: BackendConfig, model: str) -> Sequence[tuple[EngineClient, int]]:
    raise ValueError(f"backend {backend.name}: in-process engines are not available here")


def _no_profiles(backend: BackendConfig) -> SpeedModel:
    raise ConfigError("profiles cannot be read here")


class SupervisedEngineClient(RemoteEngineClient):
    """A vLLM server this gateway started, reached as a remote backend; `close` stops it."""

    def __init__(self, config: RemoteConfig, supervisor: ProcessSupervisor) -> None:
        super().__init__(config)
        self.supervisor = supervisor

    async def close(self) -> None:
        await super().close()
        await asyncio.to_thread(self.supervisor.stop)  # SIGTERM, and its grace: off the loop


def vllm_supervisor(backend: BackendConfig, model: str,
                    policy: tuple[str, dict[str, Any]]) -> ProcessSupervisor:
    """The (not yet started) supervisor of a vllm backend serving `model` under that name;
    ConfigError if its model directory or python is missing."""
    assert backend.model is not None, f"backend {backend.name} has no model"
    python = backend.python or default_vllm_python()
    if shutil.which(python) is None:
        raise ConfigError(f"backend {backend.name}: python {python!r} is not an executable "
                          "(name vLLM's venv python as `python`, or set SHUNTER_VLLM_PYTHON)")
    if not Path(backend.model).is_dir():
        raise ConfigError(f"backend {backend.name}: model {backend.model!r} is not a directory "
                          "(a vllm backend loads a local model directory)")
    port = backend.port or free_port()
    name, params = backend.vllm_policy_or(policy)
    launch = VllmLaunch(name=backend.name, python=python, model_dir=backend.model, port=port,
                        served_model_name=model, policy=name, policy_params=params,
                        dtype=backend.dtype, max_model_len=backend.max_model_len,
                        max_num_seqs=backend.max_num_seqs,
                        max_num_batched_tokens=backend.max_num_batched_tokens,
                        block_size=backend.block_size, args=backend.args,
                        kv_events=backend.kv_events, kv_events_replay=backend.kv_events_replay)
    log_path = Path(backend.log_file) if backend.log_file else \
        Path(tempfile.gettempdir()) / "shunter-vllm" / f"{backend.name}-{port}.log"
    return ProcessSupervisor(backend.name, vllm_launch_command(launch),
                             env=vllm_launch_env(launch, os.environ),
                             health_url=f"http://127.0.0.1:{port}/health", log_path=log_path,
                             startup_timeout_s=backend.startup_timeout_s,
                             max_restarts=backend.max_restarts)


def stop_supervised(slots: Sequence[BackendSlot]) -> None:
    """Stop every vLLM server among `slots` (idempotent: also after their clients closed)."""
    for slot in slots:
        if isinstance(slot.client, SupervisedEngineClient):
            slot.client.supervisor.stop()


def build_backends(backends: Sequence[BackendConfig], model: str,
                   make_engines: EngineMaker = _no_engines,
                   load_speeds: SpeedLoader = _no_profiles, *,
                   vllm_policy: tuple[str, dict[str, Any]] = (DEFAULT_ENGINE_POLICY, {}),
                   ) -> list[BackendSlot]:
    """Clients for every configured backend; `make_engines` builds (loads) the engine ones,
    `load_speeds` reads their profiles (all of them first: a bad file fails fast). The vllm
    ones are started together and waited for (their policy: their own, else `vllm_policy`);
    if one fails to start, all are stopped and the ConfigError names its log.

    An engine replica takes at most twice its batch (`max_num_seqs`) from the gateway: beyond
    that it would only queue what the gateway's own queue orders better."""
    profiled = [_speeds(b, load_speeds) for b in backends]
    supervisors = {b.name: vllm_supervisor(b, model, vllm_policy)
                   for b in backends if b.kind == "vllm"}
    _start_all(list(supervisors.values()))
    slots: list[BackendSlot] = []
    for b, speeds in zip(backends, profiled, strict=True):
        if b.kind == "engine":
            engines = make_engines(b, model)
            if b.kv_events_publish is not None:
                _publish_kv_events(b, [client for client, _ in engines])
            for i, (client, max_num_seqs) in enumerate(engines):
                name = b.name if len(engines) == 1 else f"{b.name}-{i}"
                slots.append(BackendSlot(name=name, client=client, max_num_seqs=max_num_seqs,
                                         max_concurrency=min(b.max_concurrency, max_num_seqs * 2),
                                         block_size=b.block_size, speeds=speeds,
                                         exact_prefix=b.exact_prefix))
            continue
        client: EngineClient
        if b.kind == "vllm":
            supervisor = supervisors[b.name]
            client = SupervisedEngineClient(RemoteConfig(
                url=supervisor.health_url.removesuffix("/health"), model=model,
                metrics_path=b.metrics_path, continuous_usage=b.continuous_usage,
                resume="tokens" if b.resume == "auto" else b.resume), supervisor)
        elif b.kind == "remote":
            assert b.url is not None
            client = RemoteEngineClient(RemoteConfig(
                url=b.url, model=b.model, api_key=b.api_key, metrics_path=b.metrics_path,
                health_path=b.health_path, continuous_usage=b.continuous_usage,
                resume=b.resume))
        else:
            client = FakeEngineClient(model=FakeModel(num_output_tokens=b.num_output_tokens),
                                      token_delay_s=b.token_delay_s,
                                      first_token_delay_s=b.first_token_delay_s)
        slots.append(BackendSlot(name=b.name, client=client, max_concurrency=b.max_concurrency,
                                 max_num_seqs=b.max_num_seqs, block_size=b.block_size,
                                 speeds=speeds, kv_events=b.kv_events,
                                 kv_events_replay=b.kv_events_replay))
    return slots


def _publish_kv_events(backend: BackendConfig, clients: Sequence[EngineClient]) -> None:
    """Replica i of an engine backend publishes at `replica_endpoint(kv_events_publish, i)`;
    ConfigError naming the backend if an address cannot be bound."""
    assert backend.kv_events_publish is not None
    started: list[KvEventSource] = []
    try:
        for i, client in enumerate(clients):
            if not isinstance(client, KvEventSource):
                raise ConfigError(f"backend {backend.name}: its engines cannot publish KV events "
                                  "(kv_events_publish)")
            replay = backend.kv_events_replay_publish
            try:
                client.publish_kv_events(replica_endpoint(backend.kv_events_publish, i),
                                         None if replay is None else replica_endpoint(replay, i))
            except ValueError as exc:
                raise ConfigError(f"backend {backend.name}: kv_events_publish: {exc}") from None
            started.append(client)
    except BaseException:
        for client in started:
            client.stop_kv_events()
        raise


def _start_all(supervisors: list[ProcessSupervisor]) -> None:
    try:
        for supervisor in supervisors:
            supervisor.start()
        for supervisor in supervisors:
            supervisor.wait_ready()
    except BaseException:
        for supervisor in supervisors:
            supervisor.stop()
        raise


def _speeds(backend: BackendConfig, load_speeds: SpeedLoader) -> SpeedModel | None:
    if backend.profile is None:
        return None
    try:
        return load_speeds(backend)
    except ConfigError as exc:
        raise ConfigError(f"backend {backend.name}: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayParts:
    app: AppConfig
    router: str = "cost"
    router_params: dict[str, Any] = field(default_factory=dict)
    policy: str = DEFAULT_GATEWAY_POLICY  # the gateway tier's queue (SchedulerSettings resolves it)
    policy_params: dict[str, Any] = field(default_factory=dict)
    predictor: Predictor | None = None
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
    replicas = [Replica.of_slot(b, i, parts.breaker) for i, b in enumerate(backends)]
    router = make_router(parts.router, **parts.router_params)
    if (reason := live_refusal(router)) is not None:
        raise ValueError(f"router {parts.router!r} cannot route live: {reason}")
    pool = ReplicaPool(replicas, router, parts.pool, metrics, clock,
                       kv_events=_kv_event_subscribers(backends, router, parts.router))
    tenants = TenantTable.build(list(parts.tenants), clock())
    policy = gateway_policy(parts)
    if isinstance(policy, PrefixAwarePolicy):
        pool.dispatch_index = DispatchIndex()
    queue = GatewayQueue(policy, pool.dispatch_index.probe if pool.dispatch_index else None)
    admission = AdmissionController(parts.admission, tenants, pool.capacity, metrics, clock, queue,
                                    unavailable_s=pool.unavailable_s)
    pool.on_capacity = admission.dispatch_waiting
    metrics.gauges.append(Gauge(
        "shunter_gateway_queued", "Requests waiting in the gateway's queue, per tenant.",
        ("tenant",), lambda: [((t,), float(n)) for t, n in admission.queued_per_tenant().items()]))
    metrics.extra.append(VllmSeries(
        parts.app.model_names[0], metrics, read_load=lambda: _loads(pool, clock),
        read_queued=lambda: admission.num_queued).render)
    return GatewayApp(parts.app, pool, admission, tenants, metrics, clock,
                      predictor=parts.predictor)


def _kv_event_subscribers(backends: list[BackendSlot], router: Router,
                          name: str) -> list[KvEventSubscriber]:
    """One subscriber per backend with `kv_events`, and every in-process engine with
    `exact_prefix` fed directly, into the router's exact prefix index (replica i is
    backends[i]); ValueError if a backend has `kv_events` but the router reads no prefix
    index."""
    with_events = [(i, b) for i, b in enumerate(backends) if b.kv_events is not None]
    in_process = [(i, b.client, b.block_size) for i, b in enumerate(backends)
                  if b.exact_prefix and isinstance(b.client, KvEventSource)]
    index = getattr(router, "index", None)
    if not isinstance(index, PrefixIndex):
        if with_events:
            raise ValueError(f"backends {', '.join(b.name for _, b in with_events)} publish "
                             f"kv_events, which router {name!r} does not read; prefix-aware "
                             "routers: cost, prefix_affinity, d2lpm")
        return []
    if not with_events and not in_process:
        return []
    exact = ExactPrefixIndex()
    index.exact = exact
    for i, client, block_size in in_process:
        assert isinstance(client, KvEventSource)
        exact.track(i, block_size or client.kv_block_size)
        exact.reset(i, is_complete=True)  # it has not run yet: its cache is empty
        client.feed_kv_events(functools.partial(_apply_kv_events, exact, i))
    return [KvEventSubscriber(exact, i, b.kv_events, replay_endpoint=b.kv_events_replay,
                              block_size=b.block_size, name=b.name)
            for i, b in with_events if b.kv_events is not None]


def _apply_kv_events(exact: ExactPrefixIndex, replica_id: int,
                     events: list[kv.KvEvent]) -> None:
    """An in-process engine step's events, into the exact index (on the gateway's loop)."""
    converted: list[BlockEvent] = []
    for event in events:
        match event:
            case kv.BlockStored():
                converted.append(BlocksStored(
                    engine_hashes=event.block_hashes, parent_hash=event.parent_block_hash,
                    token_ids=event.token_ids, block_size=event.block_size))
            case kv.BlockRemoved():
                converted.append(BlocksRemoved(event.block_hashes))
            case kv.AllBlocksCleared():
                converted.append(AllBlocksCleared())
    exact.apply(replica_id, converted)


def _loads(pool: ReplicaPool, clock: Callable[[], float]) -> list[tuple[float, float, float, float]]:
    """(running, waiting, KV usage, preemptions) of each backend, as its router sees it."""
    now = clock()
    out = []
    for replica in pool.replicas:
        view, reported = replica.view(now), replica.reported
        out.append((float(view.num_running), float(view.num_waiting), view.kv_usage,
                    float(reported.num_preemptions) if reported is not None else 0.0))
    return out


def gateway_policy(parts: GatewayParts) -> Policy:
    """The gateway tier's policy; tenants' weights become its `tenant_weights` (vtc, dlpm)
    unless its parameters set them. ValueError if a weight would be ignored."""
    params = dict(parts.policy_params)
    weights = {t.name: t.weight for t in parts.tenants if t.weight != 1.0}
    factory = POLICIES.get(parts.policy)
    takes_weights = factory is not None and "tenant_weights" in inspect.signature(factory).parameters
    if weights and not takes_weights:
        raise ValueError(f"tenants {', '.join(sorted(weights))} have weights, which the gateway's "
                         f"policy {parts.policy!r} does not use; weighted policies: vtc, dlpm")
    if weights and "tenant_weights" not in params:
        params["tenant_weights"] = weights
    return make_policy(parts.policy, **params)


