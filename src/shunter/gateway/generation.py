"""One generation request through the gateway: admission, the backends, the answer.

A completions `prompt` list fans out into one part per prompt (each admitted, routed and
charged on its own; choice indexes offset by `n` per prompt) and the answers merge back.

Streams answer at once: as soon as the request is in (past validation, rate limits and into
the queue), the SSE headers go out with a role-only first chunk per chat choice, and a
keep-alive comment follows every `keepalive_s` until the first token, so a request waiting in
the queue or in a long prefill never looks dead to a client or proxy. From then on an error
is an SSE error event (`{"error": ...}`), not a status. A remote backend's events are
forwarded (`render.Rendering.forward_chunk`), an engine's rendered.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shunter.backend.protocol import BackendError, GenerateChunk, GenerateRequest, Usage
from shunter.core.request import Request
from shunter.core.types import RequestSpec
from shunter.errors import RequestError
from shunter.gateway.admission import Ticket
from shunter.gateway.errors import error_response
from shunter.gateway.features import request_features
from shunter.gateway.http import JSON_HEADERS, Send, SseWriter, send_bytes
from shunter.gateway.pool import Attempt
from shunter.gateway.render import Choice, Rendering, usage_json
from shunter.gateway.schemas import ApiRequest

__all__ = ["Part", "make_parts", "merged", "stream_answer", "whole_answer"]

# what a backend's every stream event carries (OpenAI: also `obfuscation`, a random pad)
_EVERY_EVENT_FIELDS = frozenset({"id", "object", "created", "model", "choices", "usage",
                                 "system_fingerprint", "service_tier", "obfuscation"})


@dataclass(slots=True, eq=False)
class Part:
    """One prompt's share of a request."""

    generate: GenerateRequest
    spec: RequestSpec
    request: Request  # the gateway tier's state of it
    index_offset: int  # its choices' place among the request's
    ticket: Ticket | None = None
    attempt: Attempt = field(default_factory=Attempt)


def make_parts(app: Any, api: ApiRequest, arrival_s: float) -> list[Part]:
    """The request's parts, predicted (if a predictor runs) and checked against the backends."""
    parts = []
    for i, generate in enumerate(api.generates):
        refusal = app.pool.refusal(generate)
        if refusal is not None:
            param, why = refusal
            code = "context_length_exceeded" if param == "max_tokens" else "unsupported_parameter"
            raise RequestError(f"'{param}': {why}", param=param, code=code)
        spec = app.pool.spec(generate)
        request = Request.from_spec(spec, hash_blocks=False)
        request.arrival_s = arrival_s
        if app.predictor is not None:
            request.predicted_output_tokens = app.predictor.predict(
                request_features(generate, spec, app.sessions))
            generate = replace(generate, predicted_output_tokens=request.predicted_output_tokens)
        parts.append(Part(generate, spec, request, i * generate.n))
    return parts


async def merged(app: Any, parts: Sequence[Part]) -> AsyncIterator[tuple[Part, GenerateChunk]]:
    """Every part's chunks as they come (one part: its own stream, no tasks)."""
    if len(parts) == 1:
        async with contextlib.aclosing(app.pool.generate(parts[0].generate, parts[0].spec,
                                                          parts[0].attempt)) as chunks:
            async for chunk in chunks:
                yield parts[0], chunk
        return
    queue: asyncio.Queue[tuple[Part, GenerateChunk] | BaseException | None] = asyncio.Queue()

    async def pump(part: Part) -> None:
        try:
            async with contextlib.aclosing(app.pool.generate(part.generate, part.spec,
                                                              part.attempt)) as chunks:
                async for chunk in chunks:
                    queue.put_nowait((part, chunk))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.get_running_loop().create_task(pump(p)) for p in parts]
    try:
        left = len(tasks)
        while left:
            item = await queue.get()
            if item is None:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()


def _total_usage(parts: Sequence[Part]) -> tuple[Usage | None, int | None]:
    usages = [p.attempt.usage for p in parts]
    if any(u is None for u in usages):
        return None, None
    cached = [p.attempt.num_cached_tokens for p in parts]
    return (Usage(sum(u.prompt_tokens for u in usages),  # type: ignore[union-attr]
                  sum(u.completion_tokens for u in usages)),  # type: ignore[union-attr]
            None if None in cached else sum(c for c in cached if c is not None))


def _without_role(payload: Any) -> Any | None:
    """A backend's event, less the role of its own first chat event (role, nothing else:
    OpenAI's also carries `"refusal": null`), since the gateway sent its own; None when that
    event tells nothing more (vLLM's `prompt_token_ids`, say, it does)."""
    choices = payload.get("choices") or ()
    if not choices or not all(
            c.get("finish_reason") is None and not c.get("logprobs")
            and "role" in (c.get("delta") or {})
            and not any(v for k, v in c["delta"].items() if k != "role") for c in choices):
        return payload
    if all(v is None for k, v in payload.items() if k not in _EVERY_EVENT_FIELDS):
        return None
    return {**payload, "choices": [
        {**c, "delta": {k: v for k, v in c["delta"].items() if k != "role"}} for c in choices]}


def _lacks_fingerprint(payload: Any) -> bool:
    """A terminal event without `system_fingerprint`: vLLM, asked for usage (by the gateway,
    not the client), puts the fingerprint on the usage event instead of the terminal ones."""
    return "system_fingerprint" not in payload and any(
        c.get("finish_reason") is not None for c in payload["choices"])


def _release(rendering: Rendering, held: list[tuple[Part, Any]], part: Part | None,
             fingerprint: str | None) -> bytes:
    """The terminal events held for `part` (None: all), with the hidden usage event's
    `fingerprint` where the backend would have put it had the client not asked for usage."""
    out = []
    for item in [h for h in held if part is None or h[0] is part]:
        held.remove(item)
        owner, payload = item
        if fingerprint is not None:
            payload = {**payload, "system_fingerprint": fingerprint}
        out.append(rendering.forward_chunk(payload, owner.index_offset) or b"")
    return b"".join(out)


def _first_step(step: Any) -> tuple[bool, Any]:
    """Run `step` (a fresh awaitable) up to its first wait: (True, its result) when it needed
    none, else (False, the future it waits on, for `_rest`)."""
    try:
        return False, step.send(None)
    except StopIteration as stop:
        return True, stop.value


@types.coroutine
def _rest(step: Any, waiting_on: Any, thrown: BaseException | None = None
          ) -> Generator[Any, Any, Any]:
    """The rest of a `step` that `_first_step` left waiting on `waiting_on` (or, with
    `thrown`, that error delivered to it first); what the task is thrown (a cancellation)
    reaches the step where it waits, as if it had been awaited whole."""
    sent = None
    while True:
        if thrown is None:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                step.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the step, which decides
                thrown = exc
        try:  # (what the step raises, StopIteration aside, is the await's own error)
            if thrown is None:
                waiting_on = step.send(sent)
            else:
                exc, thrown = thrown, None
                waiting_on = step.throw(exc)
        except StopIteration as stop:
            return stop.value


async def _next_item(items: AsyncIterator[Any], writer: SseWriter, out: list[bytes]) -> Any:
    """The next of `items` (StopAsyncIteration at the end). What `out` holds is written only
    once the next item is not ready, so that the events of one backend read reach the client
    in one write. A cancellation of that write reaches the item's wait (the stall watch's, or
    the client's leaving) and the unwritten bytes go back to `out`."""
    step = items.__anext__()
    is_ready, value = _first_step(step)
    if is_ready or not out:
        return value if is_ready else await _rest(step, value)
    data = b"".join(out)
    out.clear()
    try:
        await writer.write(data)
    except asyncio.CancelledError as exc:
        out.append(data)  # (the send waited to drain: nothing of it was written)
        return await _rest(step, None, exc)
    except BaseException:
        with contextlib.suppress(BaseException):
            await _rest(step, None, asyncio.CancelledError())
        raise
    return await _rest(step, value)


async def stream_answer(app: Any, api: ApiRequest, parts: Sequence[Part], send: Send,
                        headers: list[tuple[bytes, bytes]], rendering: Rendering,
                        arrival_s: float) -> None:
    writer = SseWriter(send, app.config.keepalive_s)
    await writer.start(headers)
    if api.is_chat:
        roles = b"".join(rendering.role_chunk(p.index_offset + i)
                         for p in parts for i in range(p.generate.n))
        await writer.write(roles, is_waiting=True)
    usage_event: bytes | None = None
    held: list[tuple[Part, Any]] = []  # terminal events awaiting the hidden usage event's
    is_first, last_s = True, arrival_s
    out: list[bytes] = []  # events not yet written: those of one read go in one write
    try:
        for part in parts:
            assert part.ticket is not None
            await app.admission.wait(part.ticket)
        items = merged(app, parts)
        while True:
            try:
                part, chunk = await _next_item(items, writer, out)
            except StopAsyncIteration:
                break
            payload = chunk.payload
            if payload is not None:
                if api.is_chat and (payload := _without_role(payload)) is None:
                    continue
                if not payload.get("choices"):  # the backend's usage-only event
                    if len(parts) == 1 and api.include_usage:
                        usage_event = rendering.forward_chunk(payload, part.index_offset)
                    if api.include_usage:
                        continue
                    data = _release(rendering, held, part, payload.get("system_fingerprint"))
                elif not api.include_usage and _lacks_fingerprint(payload):
                    held.append((part, payload))
                    continue
                else:
                    data = rendering.forward_chunk(payload, part.index_offset)
            elif not chunk.text and chunk.finish_reason is None and not chunk.logprobs:
                continue  # a usage-only update: the client hears of usage at the end
            else:
                if part.index_offset:
                    chunk = replace(chunk, index=chunk.index + part.index_offset)
                data = rendering.chunk(chunk, _total_usage(parts)[0])
            if not data:
                continue
            now = app.clock()
            label = (part.attempt.replica.name,) if part.attempt.replica else ("none",)
            if is_first:
                app.metrics.ttft_s.observe(now - arrival_s, label)
                is_first = False
            else:
                app.metrics.itl_s.observe(now - last_s, label)
            last_s = now
            out.append(data)
    except (BackendError, RequestError) as exc:
        _, body, _ = error_response(exc)
        out += (_release(rendering, held, None, None), b"data: ", body, b"\n\n")
        await writer.write(b"".join(out))
        out.clear()
    finally:
        writer.stop_beats()
    if api.include_usage and usage_event is None:
        usage_event = rendering.usage_chunk(*_total_usage(parts))
    await writer.write(b"".join(out) + _release(rendering, held, None, None)
                       + (usage_event or b"") + b"data: [DONE]\n\n", is_last=True)


async def whole_answer(app: Any, api: ApiRequest, parts: Sequence[Part], send: Send,
                       headers: list[tuple[bytes, bytes]], rendering: Rendering,
                       arrival_s: float) -> None:
    for part in parts:
        assert part.ticket is not None
        await app.admission.wait(part.ticket)
    if len(parts) == 1:  # the common case, on the gateway's hot path: no merging
        part = parts[0]
        async with contextlib.aclosing(app.pool.generate(part.generate, part.spec,
                                                          part.attempt)) as chunks:
            first = await anext(chunks, None)
            label = (part.attempt.replica.name,) if part.attempt.replica else ("none",)
            app.metrics.ttft_s.observe(app.clock() - arrival_s, label)
            if first is not None and first.payload is not None:  # a remote's whole answer
                async for _ in chunks:
                    pass  # (a whole answer is one chunk)
                await send_bytes(send, 200, rendering.forward_whole(first.payload),
                                 [*JSON_HEADERS, *headers])
                return
            rest = [] if first is None else [first]
            async for chunk in chunks:
                rest.append(chunk)
        await _render_whole(parts, [(part, c) for c in rest], send, headers, rendering)
        return
    items = []
    async for item in merged(app, parts):
        if not items:  # the first output (the client sees it all at the end)
            label = (item[0].attempt.replica.name,) if item[0].attempt.replica else ("none",)
            app.metrics.ttft_s.observe(app.clock() - arrival_s, label)
        items.append(item)
    await _render_whole(parts, items, send, headers, rendering)


async def _render_whole(parts: Sequence[Part], items: Sequence[tuple[Part, GenerateChunk]],
                        send: Send, headers: list[tuple[bytes, bytes]],
                        rendering: Rendering) -> None:
    payloads: dict[int, Any] = {}  # part -> a remote backend's whole answer
    choices: dict[int, Choice] = {}
    for part, chunk in items:
        if chunk.payload is not None:
            payloads[id(part)] = chunk.payload
            continue
        index = chunk.index + part.index_offset
        choice = choices.setdefault(index, Choice(index))
        choice.text.append(chunk.text)
        choice.logprobs.extend(chunk.logprobs)
        choice.finish_reason = chunk.finish_reason or choice.finish_reason
    usage, cached = _total_usage(parts)
    if len(parts) == 1 and payloads:
        body = rendering.forward_whole(next(iter(payloads.values())))
    elif not payloads:
        body = rendering.whole(list(choices.values()), usage, cached)
    else:  # a prompt list served by remote backends (and maybe engines): merge the choices
        body = rendering.merge_whole(
            [(p.index_offset, payloads[id(p)]) for p in parts if id(p) in payloads],
            list(choices.values()), usage_json(usage, cached))
    await send_bytes(send, 200, body, [*JSON_HEADERS, *headers])
