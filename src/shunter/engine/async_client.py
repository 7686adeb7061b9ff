"""AsyncEngineClient: the engine behind an asyncio API, stepping on its own thread.

The gateway's event loop must never run a forward pass, so the step loop lives on a dedicated
thread that owns the LLMEngine outright: submits and aborts travel to it as commands, outputs
travel back to per-request asyncio queues via `call_soon_threadsafe`, and the load snapshot is
republished after every step (a frozen record, so reading it needs no lock). KV-cache event
sinks run on the step thread, or on the loop (`on_loop=True`), like outputs.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from typing import Any

from shunter.core.kv.events import KvEvent
from shunter.core.sched.stats import SchedulerStats
from shunter.core.types import DEFAULT_TENANT, RequestId
from shunter.engine.llm import LLMEngine
from shunter.engine.outputs import Completion, EngineOutput
from shunter.engine.sampler import SamplingParams

__all__ = ["AsyncEngineClient", "EngineDeadError"]

_Command = Callable[[], Any]


class EngineDeadError(RuntimeError):
    """The step loop died; the original exception is the __cause__."""


class AsyncEngineClient:
    """submit / stream / abort / load over an LLMEngine stepping on a background thread."""

    def __init__(self, engine: LLMEngine) -> None:
        self._engine = engine
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[RequestId, asyncio.Queue[EngineOutput | BaseException]] = {}
        self._commands: deque[tuple[_Command, Future[Any]]] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._error: BaseException | None = None
        self._snapshot = engine.load()
        # run on the step thread after each step, before its outputs are posted (`handoff`)
        self._step_hooks: list[Callable[[LLMEngine, list[EngineOutput]], None]] = []
        self._thread = threading.Thread(target=self._run, name="shunter-engine-step", daemon=True)

    @property
    def tokenizer(self) -> Any:
        return self._engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self._engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self._engine.model_config.vocab_size

    async def __aenter__(self) -> AsyncEngineClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start the step thread; call from the event loop that will consume outputs."""
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    async def close(self) -> None:
        """Stop stepping (running requests are dropped) and join the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    def add_kv_event_sink(self, sink: Callable[[list[KvEvent]], None], *,
                          on_loop: bool = False) -> None:
        """Send each step's KV-cache events to `sink`: on the step thread, or posted to the
        event loop (`on_loop`, in order with the outputs). Only before `start`."""
        if self._thread.is_alive() or self._loop is not None:
            raise RuntimeError("add KV event sinks before the engine starts")
        self._engine.add_kv_event_sink(
            (lambda events: self._post(sink, events)) if on_loop else sink)

    def add_step_hook(self, hook: Callable[[LLMEngine, list[EngineOutput]], None]) -> None:
        """Call `hook(engine, outputs)` on the step thread after every step, before the next
        (a prefill replica hands requests off there: `disagg.py`). Only before `start`."""
        if self._loop is not None:
            raise RuntimeError("add step hooks before the engine starts")
        self._step_hooks.append(hook)

    # ---- the API -------------------------------------------------------------------------

    def load(self) -> SchedulerStats:
        """The engine's load after its latest step (queue lengths, KV usage, preemptions)."""
        return self._snapshot

    async def submit(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
                     request_id: RequestId | None = None, priority: int = 0,
                     tenant: str = DEFAULT_TENANT, session_id: str | None = None,
                     program_id: str | None = None,
                     predicted_output_tokens: float | None = None) -> RequestId:
        """Queue a request (`LLMEngine.add_request`'s arguments); raises RequestError at once
        if the engine refuses it."""
        [rid] = await self.submit_many(
            prompt, [params or SamplingParams()], request_ids=[request_id], priority=priority,
            tenant=tenant, session_id=session_id, program_id=program_id,
            predicted_output_tokens=predicted_output_tokens)
        return rid

    async def submit_many(self, prompt: str | Sequence[int], params: Sequence[SamplingParams],
                          *, request_ids: Sequence[RequestId | None], priority: int = 0,
                          tenant: str = DEFAULT_TENANT, session_id: str | None = None,
                          program_id: str | None = None,
                          predicted_output_tokens: float | None = None) -> list[RequestId]:
        """Queue one request per parameter set, all on `prompt`, in one command: no step runs
        between them, so they are scheduled together (choices of one `n`). All or none: if
        the engine refuses one, those already added are aborted and the error is raised."""
        queues: list[asyncio.Queue[EngineOutput | BaseException]] = [
            asyncio.Queue() for _ in params]

        def add() -> list[RequestId]:
            added: list[RequestId] = []
            try:
                for p, request_id in zip(params, request_ids, strict=True):
                    added.append(self._engine.add_request(
                        prompt, p, request_id=request_id, priority=priority, tenant=tenant,
                        session_id=session_id, program_id=program_id,
                        predicted_output_tokens=predicted_output_tokens))
            except Exception:
                for rid in added:
                    self._engine.abort(rid)
                raise
            for rid, queue in zip(added, queues, strict=True):
                self._queues[rid] = queue  # before the next step can produce its outputs
            return added

        return await self._call(add)

    async def stream(self, request_id: RequestId) -> AsyncIterator[EngineOutput]:
        """The request's outputs as they come; leaving early aborts the request.

        Every submitted request should be streamed (or aborted): its queue lives until then.
        """
        queue = self._queues.get(request_id)
        if queue is None:
            raise KeyError(f"unknown or already streamed request {request_id!r}")
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise EngineDeadError("the engine step loop failed") from item
                finished = item.is_finished
                yield item
        finally:
            if not finished and self._error is None and not self._stopping:
                await self.abort(request_id)
            self._queues.pop(request_id, None)

    async def abort(self, request_id: RequestId) -> None:
        """End a request wherever it is and free its blocks (no-op if it already ended, or
        once the engine is closing: every request is dropped then)."""
        if self._stopping:
            return
        out = await self._call(lambda: self._engine.abort(request_id))
        queue = self._queues.get(request_id)
        if out is not None and queue is not None:
            queue.put_nowait(out)  # a stream still reading it ends with finish reason "abort"

    async def adopt(self, request_id: RequestId, command: Callable[[LLMEngine], bool]) -> bool:
        """Run `command(engine)` on the step thread between steps; if it returns True it has
        brought `request_id` in (a handed-off request, `handoff.import_request`), which is
        then streamed like a submitted one (`stream`, or `forget_stream` if it never will be)."""
        queue: asyncio.Queue[EngineOutput | BaseException] = asyncio.Queue()

        def run() -> bool:
            taken = command(self._engine)
            if taken:
                self._queues[request_id] = queue  # before the next step's outputs
            return taken

        return bool(await self._call(run))

    def forget_stream(self, request_id: RequestId) -> None:
        """Drop the outputs queued for a request whose stream will never be read."""
        self._queues.pop(request_id, None)

    async def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (`LLMEngine.reset_prefix_cache`)."""
        await self._call(self._engine.reset_prefix_cache)

    async def generate(self, prompt: str | Sequence[int],
                       params: SamplingParams | None = None) -> Completion:
        """Submit and wait for the whole completion."""
        request_id = await self.submit(prompt, params)
        return Completion.from_outputs([out async for out in self.stream(request_id)])

    # ---- plumbing ------------------------------------------------------------------------

    async def _call(self, command: _Command) -> Any:
        if self._error is not None:
            raise EngineDeadError("the engine step loop failed") from self._error
        if self._loop is None:
            raise RuntimeError("AsyncEngineClient.start() was not called")
        future: Future[Any] = Future()
        with self._wake:
            self._commands.append((command, future))
            self._wake.notify()
        return await asyncio.wrap_future(future)

    def _run(self) -> None:
        engine = self._engine
        try:
            while True:
                with self._wake:
                    while not self._stopping and not self._commands and not engine.has_unfinished_requests:
                        self._wake.wait()
                    if self._stopping:
                        return
                    commands = list(self._commands)
                    self._commands.clear()
                for command, future in commands:
                    if not future.set_running_or_notify_cancel():
                        continue  # its caller gave up before it ran: it never happened
                    try:
                        future.set_result(command())
                    except Exception as exc:  # a refused request goes back to its caller
                        future.set_exception(exc)
                if engine.has_unfinished_requests:
                    outputs = engine.step()
                    for hook in self._step_hooks:
                        hook(engine, outputs)
                    self._snapshot = engine.load()
                    if outputs:
                        self._post(self._deliver, outputs)
                else:
                    self._snapshot = engine.load()
        except BaseException as exc:  # noqa: BLE001 - report any failure to every stream
            self._error = exc
            self._post(self._fail_all, exc)
        finally:
            with self._wake:
                pending = list(self._commands)
                self._commands.clear()
            for _, future in pending:
                future.set_exception(EngineDeadError("the engine stopped"))

    def _post(self, fn: Callable[..., None], arg: Any) -> None:
        assert self._loop is not None
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, arg)

    def _deliver(self, outputs: list[EngineOutput]) -> None:
        for out in outputs:
            queue = self._queues.get(out.request_id)
            if queue is not None:
                queue.put_nowait(out)

    def _fail_all(self, exc: BaseException) -> None:
        for queue in self._queues.values():
            queue.put_nowait(exc)
