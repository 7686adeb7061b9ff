"""TetriInfer's pools on in-process engines: prefill replicas that hand requests to decode ones.

`HandoffEngineClient` has `AsyncEngineClient`'s API (so an `EngineBackend` serves it to the
gateway unchanged: chat templates, n choices, usage, logprobs) over one prefill engine:

1. `submit_many` asks the `DecodeChooser` (the gateway's decode pool and its decode router,
   `shunter.gateway.disagg`) for each request's decode replica, at arrival, as the
   simulator's disaggregated cluster does (`shunter.sim.disagg`), then queues the request on
   the prefill engine, whose token budget (512 under `topology = "tetriinfer"`) cuts its prompt
   into chunks;
2. the step that samples its first token ends; before the next one, on the prefill step thread,
   a step hook exports it with its KV (`handoff.export_request`: its prefill blocks are free);
3. `stream` yields that first token from the prefill engine, then has the decode engine adopt
   the request (`handoff.import_request` on its step thread; retried while it has no room, and
   recomputed there if it has nothing running and still no room) and yields the rest from there:
   one stream, no token lost or repeated, usage counted across both.

A stream left early (client disconnect) or failing at any stage ends the request wherever it is:
aborted on the prefill engine, dropped in flight (its copy is all it holds), or aborted on the
decode engine; no block stays held on either side.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from shunter.backend.protocol import BackendError
from shunter.core.sched.stats import SchedulerStats
from shunter.core.types import DEFAULT_TENANT, RequestId, RequestSpec
from shunter.engine.async_client import AsyncEngineClient, EngineDeadError
from shunter.engine.backend import EngineBackend
from shunter.engine.config import EngineConfig
from shunter.engine.handoff import (
    KvHandoff,
    can_export,
    export_request,
    import_request,
    requeue_request,
)
from shunter.engine.llm import LLMEngine
from shunter.engine.loader import load_model
from shunter.engine.outputs import EngineOutput, WallClock
from shunter.engine.sampler import SamplingParams
from shunter.errors import RequestError

__all__ = ["ATTACH_RETRY_S", "DecodeChooser", "HandoffEngineClient", "disaggregated_backends"]

ATTACH_RETRY_S = 0.005  # a decode engine without room is asked again this often (ours)


class DecodeChooser(Protocol):
    """Picks decode replicas and hears how requests fare there (`gateway.disagg.DecodePool`)."""

    async def choose(self, spec: RequestSpec) -> int:
        """The decode replica (an index into the decode backends) for a request arriving."""
        ...

    def on_handoff(self, request_id: RequestId, seconds: float) -> None:
        """The request's KV is in its decode replica, `seconds` after the prefill let it go."""
        ...

    def on_done(self, request_id: RequestId, *, is_failed: bool) -> None:
        """The request ended (finished, aborted, or failed: `is_failed`), wherever it was."""
        ...


def _resolve(future: asyncio.Future[Any], value: object) -> None:
    if not future.done():  # (its stream may have been left meanwhile)
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)


class HandoffEngineClient:
    """`AsyncEngineClient`'s API over one prefill engine whose requests decode elsewhere."""

    def __init__(self, prefill: AsyncEngineClient, decode: Sequence[EngineBackend],
                 chooser: DecodeChooser) -> None:
        self.prefill = prefill
        self.decode = list(decode)
        self.chooser = chooser
        self._ids = itertools.count()
        self._routes: dict[RequestId, int] = {}  # request -> its decode replica
        # each request's handoff, resolved from the prefill step thread; `_unexported` holds
        # those the step hook still waits for (it takes them out)
        self._handoffs: dict[RequestId, asyncio.Future[KvHandoff | None]] = {}
        self._unexported: dict[RequestId, asyncio.Future[KvHandoff | None]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        prefill.add_step_hook(self._after_step)

    @property
    def tokenizer(self) -> Any:
        return self.prefill.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.prefill.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.prefill.vocab_size

    def start(self) -> None:
        """Start the prefill engine (and the shared decode engines, once)."""
        self.prefill.start()
        for backend in self.decode:
            backend.ensure_started()

    async def close(self) -> None:
        """Stop the prefill engine (the decode engines' owner closes them)."""
        await self.prefill.close()

    def load(self) -> SchedulerStats:
        return self.prefill.load()

    async def submit(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                     **kwargs: Any) -> RequestId:
        request_ids = [kwargs.pop("request_id", None)]
        [rid] = await self.submit_many(prompt, [params or SamplingParams()],
                                       request_ids=request_ids, **kwargs)
        return rid

    async def submit_many(self, prompt: str | Sequence[int], params: Sequence[SamplingParams],
                          *, request_ids: Sequence[RequestId | None], priority: int = 0,
                          tenant: str = DEFAULT_TENANT, session_id: str | None = None,
                          program_id: str | None = None,
                          predicted_output_tokens: float | None = None) -> list[RequestId]:
        """`AsyncEngineClient.submit_many`, each request routed to its decode replica first."""
        token_ids = self._prompt_ids(prompt)
        ids = [rid if rid is not None else f"pd-{next(self._ids)}" for rid in request_ids]
        loop = asyncio.get_running_loop()
        try:
            for rid, p in zip(ids, params, strict=True):
                spec = RequestSpec(request_id=rid, arrival_s=0.0,
                                   num_prompt_tokens=len(token_ids), num_output_tokens=1,
                                   max_output_tokens=p.max_tokens, tenant=tenant,
                                   priority=priority, session_id=session_id,
                                   program_id=program_id, prompt_token_ids=tuple(token_ids))
                self._routes[rid] = await self.chooser.choose(spec)
                self._handoffs[rid] = self._unexported[rid] = loop.create_future()
            return await self.prefill.submit_many(
                token_ids, params, request_ids=ids, priority=priority, tenant=tenant,
                session_id=session_id, program_id=program_id,
                predicted_output_tokens=predicted_output_tokens)
        except BaseException:
            for rid in ids:
                self._end(rid, is_failed=True)
                with contextlib.suppress(Exception):  # (added before the cancel? not kept)
                    await self.prefill.abort(rid)
            raise

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        """The prompt's token ids: the decode router reads its exact length."""
        if not isinstance(prompt, str):
            return [int(t) for t in prompt]
        if self.tokenizer is None:
            raise RequestError("this model has no tokenizer; send token ids", param="prompt")
        return list(self.tokenizer.encode(prompt))

    def _after_step(self, engine: LLMEngine, outputs: list[EngineOutput]) -> None:
        """Prefill step thread, after a step: export the requests that sampled their first
        token (an exception goes to the request's stream, not to the step loop)."""
        for out in outputs:
            future = self._unexported.get(out.request_id)
            if future is None or not (out.is_finished or out.new_token_ids):
                continue
            self._unexported.pop(out.request_id, None)
            result: KvHandoff | BaseException | None = None  # None: it finished right there
            if not out.is_finished and can_export(engine, out.request_id):
                try:
                    result = export_request(engine, out.request_id)
                except Exception as exc:  # noqa: BLE001 - reported to the request's stream
                    result = exc
            loop = future.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future, result)

    async def stream(self, request_id: RequestId) -> AsyncIterator[EngineOutput]:
        """The request's outputs: its first from the prefill engine, the rest from its decode
        engine; leaving early aborts it wherever it is."""
        future = self._handoffs.get(request_id)
        decode_index = self._routes.get(request_id)
        if future is None or decode_index is None:
            raise KeyError(f"unknown or already streamed request {request_id!r}")
        decode = self.decode[decode_index].engine
        is_finished = is_adopting = is_failed = False
        outputs = self.prefill.stream(request_id)
        is_prefill_open = True
        try:
            async for out in outputs:
                yield out
                is_finished = out.is_finished
                if is_finished or out.new_token_ids:
                    break
            if is_finished:
                return
            # (the prefill engine let it go: its stream is closed aside, not waited for)
            task = asyncio.get_running_loop().create_task(outputs.aclose())
            is_prefill_open = False
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            handoff = await future
            if handoff is None:
                raise EngineDeadError(f"{request_id} sampled its first token but was not "
                                      "handed off")
            is_adopting = True
            await self._adopt(decode, handoff, decode_index)
            async with contextlib.aclosing(decode.stream(request_id)) as rest:
                async for out in rest:
                    is_finished = out.is_finished
                    yield out
        except BackendError:
            is_failed = True
            raise
        except Exception as exc:  # the handoff failed (export, import or the decode engine)
            is_failed = True
            raise BackendError(f"prefill/decode handoff to decode replica {decode_index} "
                               f"failed: {exc.__cause__ or exc}") from None
        finally:
            if is_prefill_open:
                await outputs.aclose()  # aborts it on the prefill engine
            if is_adopting and not is_finished:
                with contextlib.suppress(Exception):
                    await decode.abort(request_id)  # (after the adoption, if it ran)
                decode.forget_stream(request_id)
            self._end(request_id, is_failed=is_failed)

    async def _adopt(self, decode: AsyncEngineClient, handoff: KvHandoff,
                     decode_index: int) -> None:
        def attach(engine: LLMEngine) -> bool:
            if import_request(engine, handoff):
                return True
            if engine.has_unfinished_requests:
                return False  # room may come: ask again after a step
            requeue_request(engine, handoff)  # nothing there will free memory: recompute
            return True

        while not await decode.adopt(handoff.request_id, attach):
            await asyncio.sleep(ATTACH_RETRY_S)
        self.chooser.on_handoff(handoff.request_id, time.perf_counter() - handoff.exported_s)

    def _end(self, request_id: RequestId, *, is_failed: bool) -> None:
        self._unexported.pop(request_id, None)
        self._handoffs.pop(request_id, None)
        if self._routes.pop(request_id, None) is not None:
            self.chooser.on_done(request_id, is_failed=is_failed)

    async def abort(self, request_id: RequestId) -> None:
        """End the request wherever it is (its stream, if read, ends)."""
        await self.prefill.abort(request_id)
        decode_index = self._routes.get(request_id)
        if decode_index is not None:
            await self.decode[decode_index].engine.abort(request_id)


def disaggregated_backends(config: EngineConfig, num_prefill: int, num_decode: int,
                           make_chooser: Callable[[list[EngineBackend]], DecodeChooser],
                           ) -> list[EngineBackend]:
    """The prefill replicas of `num_prefill + num_decode` engines of `config.model` (loaded
    once, one clock: a request's times stay comparable when it moves), each handing its
    requests to the decode replicas that `make_chooser(decode backends)` picks among."""
    loaded = load_model(config.model, config.cache_dir)
    clock = WallClock()
    engines = [LLMEngine(config, loaded=loaded, clock=clock)
               for _ in range(num_prefill + num_decode)]
    decode = [EngineBackend(AsyncEngineClient(e), max_num_seqs=config.max_num_seqs,
                            kv_block_size=config.block_size) for e in engines[num_prefill:]]
    chooser = make_chooser(decode)
    return [EngineBackend(HandoffEngineClient(AsyncEngineClient(e), decode, chooser),  # type: ignore[arg-type]
                          max_num_seqs=config.max_num_seqs, kv_block_size=config.block_size)
            for e in engines[:num_prefill]]
