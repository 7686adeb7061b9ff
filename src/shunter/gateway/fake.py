"""A fake backend: a deterministic "model" with controllable delays and failures.

Used by tests, by the overhead benchmark's HTTP fake server and by `kind = "fake"` backends in
a gateway config (to try the gateway without a model). Its output is greedy decoding of a toy
model: each word is a function of the last characters of the context and its length only, so a
request resumed elsewhere with the text already sent appended to its prompt continues exactly
as the uninterrupted one would have. That is the property failover relies on.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from shunter.backend.protocol import (
    BackendError,
    BackendLoad,
    GenerateChunk,
    GenerateRequest,
    Usage,
)

__all__ = ["FAKE_WORDS", "FakeEngineClient", "FakeModel", "fake_context", "fake_num_tokens",
           "fake_token_ids", "fake_word_ids"]

FAKE_WORDS = tuple(f" {w}" for w in (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
    "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu"))
_CONTEXT_CHARS = 48


def fake_num_tokens(text: str) -> int:
    """The fake tokenizer: one token per word (at least one)."""
    return max(1, len(text.split()))


# The fake tokenizer's ids, for failover by tokens: a character of a prompt is
# _CHAR_ID0 + its code point, an output word _WORD_ID0 + its place in FAKE_WORDS. Ids below
# _CHAR_ID0 (a client's own token-id prompt) read as one word each.
_CHAR_ID0 = 1 << 24
_WORD_ID0 = 1 << 25


def fake_token_ids(text: str) -> tuple[int, ...]:
    """The fake tokenizer's ids of a context (reversible: `fake_context` reads them back)."""
    return tuple(_CHAR_ID0 + ord(c) for c in text)


def fake_word_ids(word: str) -> tuple[int, ...]:
    """The ids of an output word: one, or its characters' for a word cut by a stop string."""
    try:
        return (_WORD_ID0 + FAKE_WORDS.index(word),)
    except ValueError:
        return fake_token_ids(word)


def _decode(ids: tuple[int, ...]) -> str:
    if not ids or min(ids) < _CHAR_ID0:
        return " ".join(map(str, ids))  # a client's token ids: one word each
    return "".join(FAKE_WORDS[i - _WORD_ID0] if i >= _WORD_ID0 else chr(i - _CHAR_ID0)
                   for i in ids)


def _num_words_in(ids: tuple[int, ...]) -> int:
    return sum(1 for i in ids if i >= _WORD_ID0)


def fake_context(request: GenerateRequest) -> str:
    """The text the fake model conditions on: the prompt (or chat turns) plus the continuation
    (or, resumed by tokens, the text of those tokens)."""
    if request.resume_token_ids is not None:
        return _decode(request.resume_token_ids)
    if request.messages is not None:
        turns = "".join(f"<{m.role}>{m.content}\n" for m in request.messages)
        return f"{turns}<assistant>{request.continuation}"
    prompt = request.prompt if isinstance(request.prompt, str) else _decode(request.prompt or ())
    return prompt + request.continuation


def _num_sent(request: GenerateRequest) -> int:
    """Output words a resumed request already has (they count toward its natural length)."""
    if request.continuation:
        return fake_num_tokens(request.continuation)
    ids = request.resume_token_ids if request.resume_token_ids is not None else \
        request.prompt if isinstance(request.prompt, tuple) else ()
    return _num_words_in(ids)


@dataclass(frozen=True, slots=True)
class FakeModel:
    """Greedy toy decoding: which word follows a context, and when the model "emits EOS"."""

    num_output_tokens: int = 16  # natural length: the model stops after this many words

    def next_word(self, context: str) -> str:
        key = f"{len(context)}|{context[-_CONTEXT_CHARS:]}".encode()
        return FAKE_WORDS[zlib.crc32(key) % len(FAKE_WORDS)]

    def generate(self, request: GenerateRequest) -> tuple[list[str], str]:
        """All output words of `request` and its finish reason ("stop" or "length")."""
        context = fake_context(request)
        words: list[str] = []
        text = ""
        natural = self.num_output_tokens - _num_sent(request)
        limit = request.max_tokens if request.max_tokens is not None else 1 << 30
        while len(words) < limit:
            if not request.ignore_eos and len(words) >= natural:
                return words, "stop"
            word = self.next_word(context + text)
            hit = _first_stop(text + word, request.stop)
            if hit is not None:
                tail = (text + word)[:hit][len(text):]
                if tail:
                    words.append(tail)
                return words, "stop"
            words.append(word)
            text += word
        return words, "length"


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for s in stops if (i := text.find(s)) >= 0]
    return min(found) if found else None


@dataclass(slots=True, kw_only=True)
class FakeEngineClient:
    """An in-process `EngineClient` over `FakeModel`, with knobs for delays and failures.

    `is_failing` makes every request fail before any output, with HTTP status `fail_status`
    (None: a transport error); `fail_after_tokens` kills each stream after that many words, as
    a crashing backend would.
    """

    model: FakeModel = field(default_factory=FakeModel)
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    is_failing: bool = False
    fail_status: int | None = None
    fail_after_tokens: int | None = None
    is_healthy: bool = True
    num_running: int = 0
    num_submitted: int = 0
    aborted_ids: list[str] = field(default_factory=list)
    finished_ids: list[str] = field(default_factory=list)

    def submit(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        self.num_submitted += 1
        return self._run(request)

    async def _run(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        self.num_running += 1
        is_done = False
        try:
            if self.first_token_delay_s:
                await asyncio.sleep(self.first_token_delay_s)
            if self.is_failing:
                raise BackendError(f"fake backend failed ({self.fail_status or 'no answer'})",
                                   status_code=self.fail_status)
            words, finish_reason = self.model.generate(request)
            context = fake_context(request)
            num_prompt = fake_num_tokens(context)
            if not request.stream:  # the whole answer takes as long as its stream would
                if len(words) > 1 and self.token_delay_s:
                    await asyncio.sleep((len(words) - 1) * self.token_delay_s)
                yield GenerateChunk("".join(words), finish_reason, Usage(num_prompt, len(words)))
                is_done = True
                return
            with_ids = request.is_token_resumable
            for i, word in enumerate(words, start=1):
                if self.fail_after_tokens is not None and i > self.fail_after_tokens:
                    raise BackendError("fake backend died mid-stream")
                if i > 1 and self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                last = i == len(words)
                yield GenerateChunk(
                    word, finish_reason if last else None, Usage(num_prompt, i),
                    token_ids=fake_word_ids(word) if with_ids else None,
                    prompt_token_ids=fake_token_ids(context) if with_ids and i == 1 else None)
            if not words:
                yield GenerateChunk("", finish_reason, Usage(num_prompt, 0))
            is_done = True
        finally:
            self.num_running -= 1
            (self.finished_ids if is_done else self.aborted_ids).append(request.request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted_ids.append(request_id)

    def unsupported(self, request: GenerateRequest) -> tuple[str, str] | None:
        return None

    def resumes_by_tokens(self) -> bool:
        return True

    async def request(self, path: str, body: Mapping[str, Any]) -> tuple[int, bytes]:
        """vLLM's /tokenize and /detokenize over the fake tokenizer (one token per word)."""
        if path == "/tokenize" and isinstance(body.get("prompt"), str):
            tokens = [zlib.crc32(w.encode()) % 50_000 for w in body["prompt"].split()]
            return 200, json.dumps({"count": len(tokens), "max_model_len": 4096,
                                    "tokens": tokens}).encode()
        return 404, b'{"error": {"message": "not found"}}'

    async def load(self) -> BackendLoad | None:
        return BackendLoad(num_running=self.num_running)

    async def health(self) -> bool:
        return self.is_healthy

    async def close(self) -> None:
        return None
