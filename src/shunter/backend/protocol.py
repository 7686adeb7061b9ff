"""The one protocol every backend is reached through, and the messages that cross it.

A backend is an in-process reference-engine replica (`shunter.engine.backend` implements this
protocol over the engine), a remote OpenAI-compatible server (vLLM, llama.cpp's llama-server,
any other), or a fake for tests and benchmarks. The gateway never learns which. This module
sits below both the gateway and the engine, so neither imports the other.

Failover resumes a request elsewhere so that the client sees one unbroken stream, with
`max_tokens` lowered by the tokens already produced. By tokens where it can
(`resume_token_ids`: the prompt's token ids as the first backend tokenized them, then the ids
of every token sent; the next backend continues that exact sequence, as Dynamo does), which is
exact; by text otherwise (`continuation`: the text already sent, appended to the prompt or as
a partial assistant turn), which a tokenizer may split differently. Token counts come from the
backend's `usage`, never from the number of chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

__all__ = ["BackendError", "BackendLoad", "ChatMessage", "EngineClient", "GenerateChunk",
           "GenerateRequest", "TokenLogprob", "Usage"]


class BackendError(Exception):
    """A backend failed. `status_code` is its HTTP status, None for a transport failure.

    A 4xx is the request's fault, not the backend's: it is not retried, does not count against
    the backend's circuit breaker, and reaches the client with the backend's status and message.
    """

    def __init__(self, message: str, *, status_code: int | None = None,
                 param: str | None = None, code: str | None = None) -> None:
        self.status_code = status_code
        self.param = param  # for a 4xx: the request field at fault, if known
        self.code = code
        super().__init__(message)

    @property
    def is_client_error(self) -> bool:
        return self.status_code is not None and 400 <= self.status_code < 500


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(slots=True, kw_only=True)
class GenerateRequest:
    """One request as a backend receives it. Exactly one of `prompt` and `messages` is set.

    Read-only by contract (`replace` makes a changed copy): not a frozen dataclass because a
    frozen one sets each of its ~35 fields through `object.__setattr__`, 4x the cost of
    building it, once per request on the gateway's hot path.

    A remote OpenAI-compatible backend is sent `body`, the client's JSON as it came (every
    field passes through; the gateway sets only the model name and the usage options it needs).
    An in-process engine reads the typed fields, which the gateway validated; what it cannot
    do is refused with a 400 before any backend sees the request.
    """

    request_id: str
    model: str
    prompt: str | tuple[int, ...] | None = None  # text or token ids (completions)
    messages: tuple[ChatMessage, ...] | None = None
    continuation: str = ""  # assistant text already sent to the client (failover replay)
    # failover by tokens: the prompt's ids and the output ids sent, to continue as a raw
    # completion (rendered in the request's own shape by the gateway); None: not a resume
    resume_token_ids: tuple[int, ...] | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None  # None or -1: no cut (vLLM)
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    # sampled tokens' log-probabilities: None = none; k >= 0 = with the k most likely tokens
    # beside each (chat `top_logprobs`, completions `logprobs`)
    logprobs: int | None = None
    echo: bool = False  # completions: the prompt is returned before the output
    # structured output: {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}
    response_format: Mapping[str, Any] | None = None
    n: int = 1  # choices to generate (each an independent sample)
    body: Mapping[str, Any] | None = field(default=None, repr=False)  # the client's JSON
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

    def resumed(self, token_ids: tuple[int, ...], num_tokens_sent: int) -> GenerateRequest:
        """This request resumed from `token_ids` (its prompt's, then the `num_tokens_sent`
        output tokens the client has)."""
        max_tokens = None if self.max_tokens is None else max(1, self.max_tokens - num_tokens_sent)
        return replace(self, resume_token_ids=token_ids, max_tokens=max_tokens,
                       min_tokens=max(0, self.min_tokens - num_tokens_sent))

    @property
    def is_token_resumable(self) -> bool:
        """Whether continuing this request from token ids as a raw completion gives what the
        uninterrupted request would have: one choice, no echo, and nothing whose state lives
        outside the tokens (tool calls and structured output parse the whole answer, stop
        strings hold text back, presence/frequency penalties count output tokens only,
        logprobs come in the endpoint's own shape)."""
        if self.n != 1 or self.echo or self.stop or self.logprobs is not None \
                or self.response_format is not None or self.presence_penalty \
                or self.frequency_penalty:
            return False
        body = self.body
        return body is None or not any(body.get(k) for k in _STATEFUL_FIELDS)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the backend reported them (OpenAI `usage`)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One output token's log-probability, with the most likely tokens at its position."""

    token: str  # the token as text (a piece of a UTF-8 character may be "bytes:\\x.." as vLLM)
    logprob: float | None  # None: an echoed prompt's first token (nothing predicts it)
    token_bytes: tuple[int, ...] = ()
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()  # (token, logprob, bytes)


# body fields whose effect a raw completion of the token ids would not reproduce
_STATEFUL_FIELDS = ("tools", "functions", "response_format", "structured_outputs", "guided_json",
                    "guided_regex", "guided_choice", "guided_grammar", "logprobs", "top_logprobs",
                    "prompt_logprobs", "stop", "include_reasoning", "reasoning_effort",
                    "chat_template_kwargs", "return_token_ids")


@dataclass(frozen=True, slots=True)
class GenerateChunk:
    """A piece of output. `usage`, when set, is cumulative for this backend attempt (over all
    choices). `index` is the choice it belongs to (`n`, or a list of prompts). A remote backend
    sets `payload`: its own OpenAI object for this chunk (or its whole answer), which the
    gateway forwards as is (it sets only the id, model and created, and hides usage a client
    did not ask for); the other fields are read from it for accounting and failover."""

    text: str
    finish_reason: str | None = None  # "stop", "length", "tool_calls", or None while running
    usage: Usage | None = None
    num_cached_tokens: int | None = None
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    payload: Mapping[str, Any] | None = None
    has_tool_calls: bool = False  # the payload carries tool-call deltas (no safe text replay)
    # the ids of this chunk's output tokens, when the backend reports them (failover by tokens)
    token_ids: tuple[int, ...] | None = None
    prompt_token_ids: tuple[int, ...] | None = None  # the prompt as the backend tokenized it


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

    def unsupported(self, request: GenerateRequest) -> tuple[str, str] | None:
        """(the parameter, why) when this backend cannot serve `request` as asked; None if it
        can. The gateway routes it elsewhere, or answers 400 naming the parameter."""
        ...

    def resumes_by_tokens(self) -> bool:
        """Whether this backend reports token ids (`GenerateChunk.token_ids` and
        `prompt_token_ids`, for a stream that `is_token_resumable`) and continues a request
        from them (`GenerateRequest.resume_token_ids`); else failover replays text."""
        ...

    async def request(self, path: str, body: Mapping[str, Any]) -> tuple[int, bytes]:
        """POST `body` to one of the backend's other endpoints (vLLM's /tokenize and
        /detokenize, /v1/embeddings, /v1/responses): its HTTP status and JSON answer; 404 when
        the backend has no such endpoint."""
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
