"""`shunter serve`, the heavy half: engines, gateway and server (imported only to serve).

With no config file it serves the embedded default: `--replicas` in-process reference-engine
replicas of `--model` (SmolLM2-135M on CPU) behind the `cost` router. A config file (see
`shunter.gateway.config`) adds remote OpenAI-compatible backends (vLLM, llama-server, ...),
tenants and admission settings; flags override its [server] and [router] values.

This module is the composition root for the gateway: it is the only place that sees both
`shunter.engine` and `shunter.gateway`, and adapts the engine's `AsyncEngineClient` to the
gateway's `EngineClient` protocol (`EngineBackend`).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from shunter.cli.serve import DEFAULT_MODEL, DEFAULT_NUM_REPLICAS
from shunter.core.types import FinishReason
from shunter.engine.async_client import AsyncEngineClient, EngineDeadError
from shunter.engine.config import EngineConfig
from shunter.engine.llm import LLMEngine
from shunter.engine.loader import load_model
from shunter.engine.sampler import SamplingParams
from shunter.errors import ConfigError, RequestError
from shunter.gateway.app import AppConfig
from shunter.gateway.client import BackendLoad, GenerateChunk, GenerateRequest, Usage
from shunter.gateway.config import BackendConfig, GatewayConfig, ServerConfig, load_config
from shunter.gateway.errors import BackendError
from shunter.gateway.factory import BackendSlot, GatewayParts, build_app
from shunter.gateway.fake import FakeEngineClient, FakeModel
from shunter.gateway.remote import RemoteConfig, RemoteEngineClient
from shunter.gateway.server import serve
from shunter.router.registry import ROUTERS

__all__ = ["EngineBackend", "build_backends", "run_serve"]


class EngineBackend:
    """An in-process `AsyncEngineClient` seen through the gateway's `EngineClient` protocol."""

    __slots__ = ("engine", "is_dead", "is_started")

    def __init__(self, engine: AsyncEngineClient) -> None:
        self.engine = engine
        self.is_started = False
        self.is_dead = False

    def _prompt(self, request: GenerateRequest) -> str:
        if request.messages is None:
            return (request.prompt or "") + request.continuation
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            text = self.engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        except RequestError as exc:
            raise BackendError(str(exc), status_code=400) from None
        return text + request.continuation

    def submit(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        return self._run(request)

    async def _run(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        if not self.is_started:  # the step thread posts to the loop that starts it: the server's
            self.engine.start()
            self.is_started = True
        params = SamplingParams(max_tokens=request.max_tokens, temperature=request.temperature,
                                top_p=request.top_p, seed=request.seed, stop=request.stop,
                                ignore_eos=request.ignore_eos)
        try:
            request_id = await self.engine.submit(self._prompt(request), params,
                                                  request_id=request.request_id,
                                                  priority=request.priority, tenant=request.tenant)
            async with contextlib.aclosing(self.engine.stream(request_id)) as outputs:
                async for out in outputs:
                    if out.finish_reason is FinishReason.ABORT:
                        raise BackendError("the engine aborted the request")
                    yield GenerateChunk(out.text, None if out.finish_reason is None
                                        else str(out.finish_reason),
                                        Usage(out.num_prompt_tokens, out.num_output_tokens),
                                        out.num_cached_tokens)
        except RequestError as exc:
            raise BackendError(str(exc), status_code=400) from None
        except EngineDeadError as exc:
            self.is_dead = True
            raise BackendError(f"engine replica died: {exc.__cause__}") from None

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    async def load(self) -> BackendLoad | None:
        stats = self.engine.load()
        return BackendLoad(num_waiting=stats.num_waiting, num_running=stats.num_running,
                           kv_usage=stats.kv_usage, num_preemptions=stats.num_preemptions,
                           num_free_blocks=stats.num_free_blocks,
                           num_total_blocks=stats.num_total_blocks)

    async def health(self) -> bool:
        return not self.is_dead

    async def close(self) -> None:
        if self.is_started:
            await self.engine.close()


def _engine_slots(backend: BackendConfig, model: str) -> list[BackendSlot]:
    num = backend.replicas
    loaded = load_model(model)  # once: the replicas share the weights on disk and in memory
    config = EngineConfig(model=model, num_threads=1 if num > 1 else None)
    slots = []
    for i in range(num):
        engine = LLMEngine(config, loaded=loaded)
        name = backend.name if num == 1 else f"{backend.name}-{i}"
        slots.append(BackendSlot(name=name, client=EngineBackend(AsyncEngineClient(engine)),
                                 max_concurrency=min(backend.max_concurrency,
                                                     config.max_num_seqs * 2),
                                 max_num_seqs=config.max_num_seqs))
    return slots


def build_backends(backends: tuple[BackendConfig, ...], model: str) -> list[BackendSlot]:
    """Clients for every configured backend (engines are loaded here)."""
    slots: list[BackendSlot] = []
    for b in backends:
        if b.kind == "engine":
            slots += _engine_slots(b, model)
            continue
        if b.kind == "remote":
            assert b.url is not None
            client: Any = RemoteEngineClient(RemoteConfig(
                url=b.url, model=b.model, api_key=b.api_key, metrics_path=b.metrics_path,
                health_path=b.health_path, continuous_usage=b.continuous_usage))
        else:
            client = FakeEngineClient(model=FakeModel(num_output_tokens=b.num_output_tokens),
                                      token_delay_s=b.token_delay_s,
                                      first_token_delay_s=b.first_token_delay_s)
        slots.append(BackendSlot(name=b.name, client=client, max_concurrency=b.max_concurrency,
                                 max_num_seqs=b.max_num_seqs))
    return slots


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
    app = build_app(parts, build_backends(config.backends, model))
    names = ", ".join(r.name for r in app.pool.replicas)
    print(f"shunter gateway on http://{server.host}:{server.port}/v1 serving "
          f"{', '.join(app_config.model_names)} via {names} (router {config.router})", flush=True)
    serve(app, server.host, server.port, log_level=args.log_level)
    return 0
