"""The pieces of one backend request's answer: its choices' engine streams merged into one,
and engine log-probs turned into the backend protocol's (token text and UTF-8 bytes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from shunter.backend.protocol import TokenLogprob
from shunter.engine.async_client import AsyncEngineClient
from shunter.engine.outputs import EngineOutput, TokenLogprobs

__all__ = ["merged_outputs", "protocol_logprobs"]

_Item = tuple[int, EngineOutput | None] | BaseException


async def merged_outputs(engine: AsyncEngineClient, request_ids: Sequence[str],
                         ) -> AsyncIterator[tuple[int, EngineOutput]]:
    """(choice index, output) from every request's stream as they come; leaving early aborts
    the requests still running (each stream aborts its own)."""
    if len(request_ids) == 1:
        async with contextlib.aclosing(engine.stream(request_ids[0])) as outputs:
            async for out in outputs:
                yield 0, out
        return
    queue: asyncio.Queue[_Item] = asyncio.Queue()

    async def pump(index: int, request_id: str) -> None:
        try:
            async with contextlib.aclosing(engine.stream(request_id)) as outputs:
                async for out in outputs:
                    queue.put_nowait((index, out))
            queue.put_nowait((index, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            queue.put_nowait(exc)

    tasks = [asyncio.create_task(pump(i, rid)) for i, rid in enumerate(request_ids)]
    try:
        num_open = len(tasks)
        while num_open:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            index, out = item
            if out is None:
                num_open -= 1
            else:
                yield index, out
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def protocol_logprobs(tokenizer: Any, entries: Sequence[TokenLogprobs], *,
                      lists_chosen: bool) -> tuple[TokenLogprob, ...]:
    """Engine log-probs as the protocol's. `lists_chosen`: the alternatives include the chosen
    token when it is not among the k most likely (the completions API: up to k + 1)."""

    def piece(token_id: int) -> tuple[str, tuple[int, ...]]:
        if tokenizer is None:  # a model without a tokenizer speaks token ids
            return f"token_id:{token_id}", ()
        return tokenizer.token_text(token_id), tuple(tokenizer.token_bytes(token_id))

    out = []
    for entry in entries:
        top = list(entry.top)
        if (lists_chosen and entry.logprob is not None
                and all(t != entry.token_id for t, _ in top)):
            top.append((entry.token_id, entry.logprob))
        alternatives = []
        for token_id, logprob in top:
            alt_text, alt_bytes = piece(token_id)
            alternatives.append((alt_text, logprob, alt_bytes))
        text, raw = piece(entry.token_id)
        # the prompt's first token has no log-prob: None, as OpenAI and vLLM answer null
        out.append(TokenLogprob(text, entry.logprob, raw,  # type: ignore[arg-type]
                                tuple(alternatives)))
    return tuple(out)
