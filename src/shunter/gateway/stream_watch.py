"""What the pool watches while a stream runs on a backend: the token ids it produced, for a
failover by tokens (`TokenTrail`), and the time to its first and next token, for a failover
from a backend that hung (`StallWatch`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from shunter.backend.protocol import BackendError, GenerateChunk

__all__ = ["StallWatch", "TokenTrail"]


@dataclass(slots=True)
class TokenTrail:
    """The token ids a stream has produced: its prompt's (as the first backend tokenized it)
    and its outputs', for a failover by tokens. `is_whole` when every output token sent has
    its id (a backend that does not report ids, or reports some, breaks the trail)."""

    prompt: tuple[int, ...] | None = None
    output: list[int] = field(default_factory=list)
    is_broken: bool = False

    def add(self, chunk: GenerateChunk, *, is_first_attempt: bool) -> None:
        if is_first_attempt and chunk.prompt_token_ids is not None and self.prompt is None:
            self.prompt = chunk.prompt_token_ids
        if chunk.token_ids is not None:
            self.output.extend(chunk.token_ids)
        elif chunk.text:
            self.is_broken = True

    def is_whole(self, num_output_tokens: int) -> bool:
        return (not self.is_broken and self.prompt is not None
                and len(self.output) == num_output_tokens)

    def ids(self) -> tuple[int, ...]:
        assert self.prompt is not None
        return (*self.prompt, *self.output)


class StallWatch:
    """Leaves a backend that sends no first token within `ttft_s`, or no next one within
    `stall_s`: the request's task is cancelled while it waits on the backend and the wait
    ends in a BackendError (so the request fails over). Only time spent waiting on the backend
    counts (not time the client takes to read), and a chunk costs one clock read: one timer
    per request checks the wait's start when it fires."""

    __slots__ = ("_handle", "_loop", "fired", "is_started", "is_waiting", "last_s", "stall_s",
                 "task", "ttft_s")

    def __init__(self, ttft_s: float, stall_s: float) -> None:
        self.ttft_s, self.stall_s = ttft_s, stall_s
        self._loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.last_s = self._loop.time()
        self.is_started = self.is_waiting = self.fired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self.last_s + ttft_s, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        limit = self.stall_s if self.is_started else self.ttft_s
        if self.is_waiting and now - self.last_s >= limit and self.task is not None:
            self.fired = True
            self._handle = None
            self.task.cancel()
            return
        due = self.last_s + limit
        self._handle = self._loop.call_at(due if self.is_waiting and due > now else now + limit,
                                          self._check)

    async def guard(self, chunks: AsyncIterator[GenerateChunk], name: str
                    ) -> AsyncIterator[GenerateChunk]:
        iterator = aiter(chunks)
        while True:
            self.last_s = self._loop.time()  # the wait on the backend starts
            self.is_waiting = True
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not self.fired:
                    raise
                assert self.task is not None
                self.task.uncancel()
                what = "no next token" if self.is_started else "no first token"
                raise BackendError(f"backend {name} sent {what} for "
                                   f"{self.stall_s if self.is_started else self.ttft_s:g} s "
                                   "(left for another replica)") from None
            finally:
                self.is_waiting = False
            self.is_started = True
            yield chunk

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
