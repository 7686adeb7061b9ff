"""The reference engine as a gateway backend: `EngineBackend` implements the backend protocol
(`shunter.backend.protocol.EngineClient`) over an `AsyncEngineClient`, and `engine_backends`
builds the in-process replicas of one model (they share its weights)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

from shunter.backend.protocol import (
    BackendError,
    BackendLoad,
    GenerateChunk,
    GenerateRequest,
    Usage,
)
from shunter.core.types import FinishReason
from shunter.engine.async_client import AsyncEngineClient, EngineDeadError
from shunter.engine.config import EngineConfig
from shunter.engine.llm import LLMEngine
from shunter.engine.loader import load_model
from shunter.engine.sampler import SamplingParams
from shunter.errors import RequestError

__all__ = ["EngineBackend", "engine_backends"]


class EngineBackend:
    """An in-process `AsyncEngineClient` seen through the backend protocol."""

    __slots__ = ("engine", "is_dead", "is_started", "max_num_seqs")

    def __init__(self, engine: AsyncEngineClient, *, max_num_seqs: int) -> None:
        self.engine = engine
        self.max_num_seqs = max_num_seqs
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
            request_id = await self.engine.submit(
                self._prompt(request), params, request_id=request.request_id,
                priority=request.priority, tenant=request.tenant, session_id=request.session_id,
                program_id=request.program_id,
                predicted_output_tokens=request.predicted_output_tokens)
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


def engine_backends(config: EngineConfig, num_replicas: int) -> list[EngineBackend]:
    """`num_replicas` engines of `config.model`, loaded once (they share the weights on disk
    and in memory), each with `config` (its policy, threads, ...)."""
    loaded = load_model(config.model, config.cache_dir)
    engines = [LLMEngine(config, loaded=loaded)]
    # a budget the first one measured (sarathi) holds for its identical siblings
    config = replace(config,
                     max_num_batched_tokens=engines[0].scheduler.config.max_num_batched_tokens)
    engines += [LLMEngine(config, loaded=loaded) for _ in range(num_replicas - 1)]
    return [EngineBackend(AsyncEngineClient(e), max_num_seqs=config.max_num_seqs)
            for e in engines]
