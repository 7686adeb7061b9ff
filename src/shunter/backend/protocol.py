"""The one protocol every backend is reached through, and the messages that cross it.

A backend is an in-process reference-engine replica (`shunter.engine.backend` implements this
protocol over the engine), a remote OpenAI-compatible server (vLLM, llama.cpp's llama-server,
any other), or a fake for tests and benchmarks. The gateway never learns which. This module
sits below both the gateway and the engine, so neither imports the other.

Failover replays a request elsewhere as its original prompt plus the text already sent to the
client (`continuation`), with `max_tokens` lowered by the tokens already produced, so that the
client sees one unbroken stream. Token counts come from the backend's `usage`, never from the
number of chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Protocol

__all__ = ["BackendError", "BackendLoad", "ChatMessage", "EngineClient", "GenerateChunk",
           "GenerateRequest", "Usage"]


class BackendError(Exception):
    """A backend failed. `status_code` is its HTTP status, None for a transport failure.

    A 4xx is the request's fault, not the backend's: it is not retried, does not count against
    the backend's circuit breaker, and reaches the client with the backend's status and message.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)

    @property
    def is_client_error(self) -> bool:
        return self.status_code is not None and 400 <= self.status_code < 500


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateRequest:
    """One request as a backend receives it. Exactly one of `prompt` and `messages` is set."""

    request_id: str
    model: str
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    continuation: str = ""  # assistant text already sent to the client (failover replay)
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    priority: int = 0
    tenant: str = "default"
    session_id: str | None = None
    program_id: str | None = None  # the agent program the call belongs to (plas)
    # the gateway's output-length prediction (sjf, ltr), so an engine behind it need not
    # predict again; None when no predictor runs
    predicted_output_tokens: float | None = None
    stream: bool = True  # a hint: False lets a remote backend answer in one piece

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def replayed(self, text_sent: str, num_tokens_sent: int) -> GenerateRequest:
        """This request resumed after `text_sent` (`num_tokens_sent` tokens) reached the client."""
        max_tokens = None if self.max_tokens is None else max(1, self.max_tokens - num_tokens_sent)
        return replace(self, continuation=self.continuation + text_sent, max_tokens=max_tokens)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the backend reported them (OpenAI `usage`)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class GenerateChunk:
    """A piece of output. `usage`, when set, is cumulative for this backend attempt."""

    text: str
    finish_reason: str | None = None  # "stop", "length", or None while running
    usage: Usage | None = None
    num_cached_tokens: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendLoad:
    """A backend's load as it last reported it (remote: its /metrics; in-process: its engine)."""

    num_waiting: int = 0
    num_running: int = 0
    kv_usage: float = 0.0  # fraction of KV blocks in use, 0..1
    num_preemptions: int = 0  # cumulative
    num_free_blocks: int | None = None
    num_total_blocks: int | None = None
    taken_at_s: float = 0.0


class EngineClient(Protocol):
    """A backend as the gateway sees it."""

    def submit(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Start `request` and iterate over its output; closing the iterator aborts it.

        Raises `BackendError` on failure (before or after the first chunk)."""
        ...

    async def abort(self, request_id: str) -> None:
        """Stop a request's backend work; unknown or finished ids are ignored."""
        ...

    async def load(self) -> BackendLoad | None:
        """Read the backend's current load; None when it cannot report one."""
        ...

    async def health(self) -> bool:
        """Whether the backend answers its health check."""
        ...

    async def close(self) -> None:
        """Release connections and background work."""
        ...
