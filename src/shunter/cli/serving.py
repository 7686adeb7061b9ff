"""`shunter serve`, the heavy half: engines, gateway and server (imported only to serve).

With no config file it serves the embedded default: `--replicas` in-process reference-engine
replicas of `--model` (SmolLM2-135M on CPU) behind the `cost` router. A config file (see
`shunter.gateway.config`) adds remote OpenAI-compatible backends (vLLM, llama-server, ...),
tenants and admission settings; flags override its [server] and [router] values.

This module only composes: backends come from `shunter.gateway.factory.build_backends`, the
in-process ones from `shunter.engine.backend.engine_backends` (the gateway may not import the
engine, so their maker is passed in from here).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace

from shunter.backend.protocol import EngineClient
from shunter.engine.backend import engine_backends
from shunter.engine.config import EngineConfig
from shunter.errors import ConfigError
from shunter.gateway.app import AppConfig
from shunter.gateway.config import (
    DEFAULT_MODEL,
    DEFAULT_NUM_REPLICAS,
    BackendConfig,
    GatewayConfig,
    ServerConfig,
    load_config,
)
from shunter.gateway.factory import GatewayParts, build_app, build_backends
from shunter.gateway.server import serve
from shunter.router.registry import ROUTERS

__all__ = ["make_engines", "run_serve"]


def make_engines(backend: BackendConfig, model: str) -> Sequence[tuple[EngineClient, int]]:
    """The in-process replicas of an engine backend (one torch thread each when several)."""
    num = backend.replicas
    config = EngineConfig(model=model, num_threads=1 if num > 1 else None)
    return [(b, b.max_num_seqs) for b in engine_backends(config, num)]


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
    return replace(config, server=server, router=args.router or config.router, backends=backends)


def run_serve(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    model = config.server.models[0] if config.server.models else DEFAULT_MODEL
    if args.router is not None and args.router not in ROUTERS:
        raise ConfigError(f"unknown router {args.router!r}; valid: {', '.join(sorted(ROUTERS))}")
    server: ServerConfig = config.server
    app_config = AppConfig(model_names=server.models or (model,),
                           max_body_bytes=server.max_body_bytes,
                           max_prompt_chars=server.max_prompt_chars,
                           drain_timeout_s=server.drain_timeout_s)
    parts = GatewayParts(app=app_config, router=config.router, router_params=config.router_params,
                         admission=config.admission, pool=config.pool, breaker=config.breaker,
                         tenants=config.tenants)
    app = build_app(parts, build_backends(config.backends, model, make_engines))
    names = ", ".join(r.name for r in app.pool.replicas)
    print(f"shunter gateway on http://{server.host}:{server.port}/v1 serving "
          f"{', '.join(app_config.model_names)} via {names} (router {config.router})", flush=True)
    serve(app, server.host, server.port, log_level=args.log_level)
    return 0
