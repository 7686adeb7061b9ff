"""`shunter serve`, the heavy half: engines, gateway and server (imported only to serve).

With no config file it serves the embedded default: `--replicas` in-process reference-engine
replicas of `--model` (SmolLM2-135M on CPU) behind the `cost` router. A config file (see
`shunter.gateway.config`) adds remote OpenAI-compatible backends (vLLM, llama-server, ...),
tenants and admission settings; flags override its [server] and [router] values.

This module only composes: backends come from `shunter.gateway.factory.build_backends`, the
in-process ones from `shunter.engine.backend.engine_backends` (the gateway may not import the
engine, so their maker is passed in from here), and a backend's speed from its `profile` file
through the simulator's cost model (`shunter.sim.cost.speed`, which the gateway may not import
either), so a profiled backend looks to the router exactly as a simulated replica does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from shunter.backend.protocol import EngineClient
from shunter.core.sched.config import SchedulerConfig
from shunter.engine.backend import EngineBackend, engine_backends
from shunter.engine.config import DEFAULT_MAX_NUM_BATCHED_TOKENS, EngineConfig
from shunter.engine.disagg import disaggregated_backends
from shunter.errors import ConfigError
from shunter.gateway.app import AppConfig, GatewayApp
from shunter.gateway.autoscale import LiveAutoscaler, ReplicaMaker
from shunter.gateway.config import (
    DEFAULT_MODEL,
    DEFAULT_NUM_REPLICAS,
    BackendConfig,
    GatewayConfig,
    ServerConfig,
    load_config,
)
from shunter.gateway.disagg import DecodePool, num_prefill_replicas
from shunter.gateway.factory import (
    EngineMaker,
    GatewayParts,
    build_app,
    build_backends,
    stop_supervised,
)
from shunter.gateway.replica import BackendSlot, Replica
from shunter.gateway.server import serve
from shunter.gateway.settings import SchedulerSettings
from shunter.router.autoscale import Autoscaler
from shunter.router.registry import ROUTERS
from shunter.sim.config import TETRIINFER_CHUNK_TOKENS
from shunter.sim.cost.speed import ReplicaSpeeds, profile_speeds
from shunter.workload.rank_training import build_predictor

__all__ = ["backend_speeds", "check_can_listen", "engine_maker", "make_engines", "replica_maker",
           "run_serve"]

# a remote backend's token budget when its config does not say: the simulator's (vLLM's on
# large GPUs)
REMOTE_MAX_NUM_BATCHED_TOKENS = SchedulerConfig(num_blocks=1).max_num_batched_tokens


def engine_maker(settings: SchedulerSettings, *, is_scaled: bool = False,
                 decode_pools: list[DecodePool] | None = None) -> EngineMaker:
    """Builds the in-process replicas of an engine backend, running `settings`' engine policy
    (one torch thread each when there are several, or may be: `is_scaled`). A backend with a
    topology yields its prefill replicas; its decode pool goes to `decode_pools`."""
    policy, params = settings.engine_policy

    def make(backend: BackendConfig, model: str) -> Sequence[tuple[EngineClient, int]]:
        num = backend.replicas
        budget = backend.max_num_batched_tokens
        if backend.topology is not None and budget is None:
            budget = TETRIINFER_CHUNK_TOKENS  # the simulator's prefill chunk, on every replica
        sizes = {k: v for k, v in (("block_size", backend.block_size),
                                   ("max_num_batched_tokens", budget)) if v is not None}
        config = EngineConfig(model=model, num_threads=1 if num > 1 or is_scaled else None,
                              policy=policy, policy_params=params, scheduler=sizes)
        if backend.topology is not None:
            return [(b, b.max_num_seqs) for b in _split_backends(backend, config, decode_pools)]
        return [(b, b.max_num_seqs) for b in engine_backends(config, num)]
    return make


def _split_backends(backend: BackendConfig, config: EngineConfig,
                    decode_pools: list[DecodePool] | None) -> list[EngineBackend]:
    """TetriInfer's pools: the prefill replicas, handing off to a new decode pool."""
    num_prefill = num_prefill_replicas(backend)

    def make_pool(decode: list[EngineBackend]) -> DecodePool:
        pool = DecodePool.of(backend.name, decode, backend.decode_router,
                             backend.decode_router_params, max_num_seqs=config.max_num_seqs,
                             block_size=config.block_size,
                             speeds=backend_speeds(backend) if backend.profile else None)
        if decode_pools is not None:
            decode_pools.append(pool)
        return pool

    return disaggregated_backends(config, num_prefill, backend.replicas - num_prefill,
                                  make_pool)


make_engines = engine_maker(SchedulerSettings())  # the defaults: fcfs engines


def backend_speeds(backend: BackendConfig) -> ReplicaSpeeds:
    """The speeds `backend`'s profile file gives it at its token budget (ConfigError naming the
    file if it is missing or malformed)."""
    assert backend.profile is not None, f"backend {backend.name} has no profile"
    budget = backend.max_num_batched_tokens or (
        DEFAULT_MAX_NUM_BATCHED_TOKENS if backend.kind == "engine"
        else REMOTE_MAX_NUM_BATCHED_TOKENS)
    return profile_speeds(backend.profile, budget)


def _config_from_args(args: argparse.Namespace) -> GatewayConfig:
    config = load_config(args.config) if args.config else GatewayConfig()
    server = config.server
    server = replace(server, host=args.host or server.host, port=args.port or server.port,
                     models=(args.model,) if args.model else server.models)
    backends = config.backends
    if not backends or args.replicas:
        replicas = args.replicas or DEFAULT_NUM_REPLICAS
        engines = [b for b in backends if b.kind == "engine"]
        others = tuple(b for b in backends if b.kind != "engine")
        base = engines[0] if engines else BackendConfig(name="engine", kind="engine")
        backends = (*others, replace(base, replicas=replicas))
    backends = _kv_events_from_args(backends, args)
    backends = _topology_from_args(backends, args)
    return replace(config, server=server, router=args.router or config.router, backends=backends,
                   scheduler=_scheduler_from_args(config.scheduler, args))


def _kv_events_from_args(backends: tuple[BackendConfig, ...],
                         args: argparse.Namespace) -> tuple[BackendConfig, ...]:
    """--kv-events-publish / --kv-events-replay-publish onto the one engine backend."""
    publish = getattr(args, "kv_events_publish", None)
    replay = getattr(args, "kv_events_replay_publish", None)
    if publish is None and replay is None:
        return backends
    return _onto_the_engine(backends, "--kv-events-publish", "kv_events_publish", lambda base: {
        "kv_events_publish": publish or base.kv_events_publish,
        "kv_events_replay_publish": replay or base.kv_events_replay_publish})


def _topology_from_args(backends: tuple[BackendConfig, ...],
                        args: argparse.Namespace) -> tuple[BackendConfig, ...]:
    """--topology onto the one in-process engine backend."""
    topology = getattr(args, "topology", None)
    if topology is None:
        return backends
    return _onto_the_engine(backends, "--topology", "topology", lambda base: {"topology": topology})


def _onto_the_engine(backends: tuple[BackendConfig, ...], flag: str, key: str,
                     changes: Callable[[BackendConfig], dict[str, Any]]
                     ) -> tuple[BackendConfig, ...]:
    """The backends with `changes(base)` applied to the one in-process engine backend; a
    ConfigError naming `flag` if there is not exactly one, or if the change is invalid."""
    engines = [i for i, b in enumerate(backends) if b.kind == "engine"]
    if len(engines) != 1:
        raise ConfigError(f"{flag} needs exactly one in-process engine backend (the config has "
                          f"{len(engines)}); set {key} per backend")
    i = engines[0]
    try:
        changed = replace(backends[i], **changes(backends[i]))
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    return (*backends[:i], changed, *backends[i + 1:])


def _scheduler_from_args(settings: SchedulerSettings, args: argparse.Namespace) -> SchedulerSettings:
    """The config's [scheduler] with the flags on top (a new --policy drops the file's params)."""
    changes = {}
    if args.policy is not None:
        changes |= {"policy": args.policy, "params": args.policy_params or {}}
    elif args.policy_params is not None:
        changes["params"] = args.policy_params
    if args.predictor is not None:
        changes |= {"predictor": args.predictor, "predictor_params": args.predictor_params or {}}
    elif args.predictor_params is not None:
        changes["predictor_params"] = args.predictor_params
    if not changes:
        return settings
    try:
        return replace(settings, **changes)
    except ValueError as exc:
        raise ConfigError(f"--policy/--predictor flags: {exc}") from None


def _gateway_tier(settings: SchedulerSettings, has_engines: bool, source: str
                  ) -> tuple[str, dict[str, Any]]:
    try:
        return settings.gateway_tier(has_engines=has_engines)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def check_can_listen(host: str, port: int) -> None:
    """Raise ConfigError ("cannot listen on HOST:PORT: address already in use") unless every
    address of `host` can be bound at `port` now: checked before the engines load and the
    ready banner prints. SO_REUSEADDR as uvicorn's: a port in TIME_WAIT is free, a listening
    one is not."""
    def refused(reason: str) -> ConfigError:
        return ConfigError(f"cannot listen on {host}:{port}: {reason[:1].lower()}{reason[1:]}")

    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise refused(exc.strerror or str(exc)) from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise refused(exc.strerror or str(exc)) from None


def run_serve(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    model = config.server.models[0] if config.server.models else DEFAULT_MODEL
    if args.router is not None and args.router not in ROUTERS:
        raise ConfigError(f"unknown router {args.router!r}; valid: {', '.join(sorted(ROUTERS))}")
    check_can_listen(config.server.host, config.server.port)
    server: ServerConfig = config.server
    app_config = AppConfig(model_names=server.models or (model,),
                           max_body_bytes=server.max_body_bytes,
                           max_prompt_chars=server.max_prompt_chars,
                           drain_timeout_s=server.drain_timeout_s,
                           keepalive_s=server.keepalive_s, cors_origins=server.cors_origins,
                           metrics_key=server.metrics_key)
    settings = config.scheduler
    source = f"{args.config} [scheduler]" if args.config else "--policy"
    has_engines = any(b.kind in ("engine", "vllm") for b in config.backends)
    queue_policy, queue_params = _gateway_tier(settings, has_engines, source)
    predictor = None
    if settings.predictor is not None:
        try:
            predictor = build_predictor(settings.predictor, settings.predictor_params)
        except ValueError as exc:
            raise ConfigError(f"{source}: predictor: {exc}") from None
    parts = GatewayParts(app=app_config, router=config.router, router_params=config.router_params,
                         policy=queue_policy, policy_params=queue_params, predictor=predictor,
                         admission=config.admission, pool=config.pool, breaker=config.breaker,
                         tenants=config.tenants)
    slots = []
    decode_pools: list[DecodePool] = []  # of backends with a topology
    try:
        slots = build_backends(config.backends, model,
                               engine_maker(settings, is_scaled=config.autoscale is not None,
                                            decode_pools=decode_pools),
                               backend_speeds, vllm_policy=settings.engine_policy)
        engine_lens = [s.client.engine.max_model_len for s in slots
                       if isinstance(s.client, EngineBackend)]
        max_model_len = server.max_model_len or (min(engine_lens) if engine_lens else None)
        app = build_app(replace(parts, app=replace(app_config, max_model_len=max_model_len)),
                        slots)
        for decode_pool in decode_pools:
            decode_pool.bind(app.metrics)
            app.services.append(decode_pool)
        if config.autoscale is not None:
            app.services.append(_autoscaler(config, app, model))
    except ValueError as exc:
        stop_supervised(slots)
        raise ConfigError(str(exc)) from None
    names = ", ".join(r.name for r in app.pool.replicas)
    for decode_pool in decode_pools:  # (the pool's replicas are their prefill replicas)
        names += f" (prefill) -> {', '.join(r.name for r in decode_pool.replicas)} (decode)"
    engines = f"engines {settings.engine_policy[0]}, " if has_engines else ""
    print(f"shunter gateway on http://{server.host}:{server.port}/v1 serving "
          f"{', '.join(app_config.model_names)} via {names} (router {config.router}; policy "
          f"{engines}gateway queue {queue_policy}"
          f"{f'; predictor {settings.predictor}' if predictor else ''})", flush=True)
    _log_to_stderr(args.log_level)
    try:
        serve(app, server.host, server.port, limits=config.limits, log_level=args.log_level)
    finally:
        stop_supervised(slots)  # the vLLM servers this gateway started, however it ended
    return 0


def _autoscaler(config: GatewayConfig, app: GatewayApp, model: str) -> LiveAutoscaler:
    """The [autoscale] table's autoscaler over `app`'s pool."""
    assert config.autoscale is not None
    return LiveAutoscaler(app.pool, Autoscaler(config.autoscale.config),
                          replica_maker(config, model), config.autoscale.backend, app.metrics,
                          app.clock, queue=app.admission.queue)


def replica_maker(config: GatewayConfig, model: str) -> ReplicaMaker:
    """Builds one more replica of the [autoscale] table's backend as at start-up (an engine
    loads the model, a vllm backend starts a server on a free port: its cold start)."""
    assert config.autoscale is not None
    backend = next(b for b in config.backends if b.name == config.autoscale.backend)
    settings = config.scheduler
    make_engines = engine_maker(settings, is_scaled=True)

    def build(index: int) -> BackendSlot:
        one = replace(backend, name=f"{backend.name}-{index}", replicas=1)
        slot, = build_backends([one], model, make_engines, backend_speeds,
                               vllm_policy=settings.engine_policy)
        return slot

    # one builder thread for as long as the maker lives: a model loads off the event loop, and
    # a vLLM server started there lives as long as the thread that started it (its
    # PR_SET_PDEATHSIG), which a pooled thread of asyncio's default executor may not
    builder = ThreadPoolExecutor(1, thread_name_prefix=f"autoscale-{backend.name}")

    async def make(index: int, replica_id: int) -> Replica:
        slot = await asyncio.get_running_loop().run_in_executor(builder, build, index)
        return Replica.of_slot(slot, replica_id, config.breaker)

    return make


def _log_to_stderr(level: str) -> None:
    """The gateway's own log lines (500s with their tracebacks, the descriptor budget, the
    open-file limit) on stderr at `--log-level`, as uvicorn's are."""
    logger = logging.getLogger("shunter")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:    [%(name)s] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())
