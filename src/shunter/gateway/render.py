"""Answers in OpenAI's shapes: rendered from an in-process engine's chunks, or forwarded from a
remote backend's own objects.

Forwarded (a remote backend's `GenerateChunk.payload`): every field the backend sent reaches
the client (`tool_calls`, `logprobs`, `refusal`, `system_fingerprint`,
`usage.prompt_tokens_details`, vLLM's `stop_reason`, ...). The gateway sets only `id` (one per
request, across failovers), `model` (the name the client asked for) and `created` (when the
request arrived), and hides the usage it asked the backend for if the client did not: the
usage-only final event without `stream_options.include_usage`, per-chunk usage without
`continuous_usage_stats`.

Rendered (an engine's chunks): `choices[index]` with text or delta, `logprobs` in the chat or
completions shape, a role-only first delta per chat choice, as OpenAI streams.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shunter.backend.protocol import GenerateChunk, TokenLogprob, Usage
from shunter.gateway.jsonio import dumps

__all__ = ["Choice", "Rendering", "logprobs_json", "usage_json"]

_DUMPS = dumps  # compact UTF-8 (`jsonio`)


def usage_json(usage: Usage | None, num_cached_tokens: int | None = None
               ) -> dict[str, Any] | None:
    if usage is None:
        return None
    out: dict[str, Any] = {"prompt_tokens": usage.prompt_tokens,
                           "completion_tokens": usage.completion_tokens,
                           "total_tokens": usage.total_tokens}
    if num_cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": num_cached_tokens}
    return out


def _top(entries: Sequence[tuple[str, float, tuple[int, ...]]]) -> list[dict[str, Any]]:
    return [{"token": t, "logprob": lp, "bytes": list(b)} for t, lp, b in entries]


def logprobs_json(logprobs: Sequence[TokenLogprob], is_chat: bool, text_offset: int = 0
                  ) -> dict[str, Any]:
    """OpenAI's `logprobs` object for these tokens: chat's `content` list, or completions'
    parallel arrays (`text_offset` counts from the choice's start)."""
    if is_chat:
        return {"content": [{"token": lp.token, "logprob": lp.logprob,
                             "bytes": list(lp.token_bytes), "top_logprobs": _top(lp.top)}
                            for lp in logprobs], "refusal": None}
    offsets, at = [], text_offset
    for lp in logprobs:
        offsets.append(at)
        at += len(lp.token)
    return {"tokens": [lp.token for lp in logprobs],
            "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [None if lp.logprob is None else {t: v for t, v, _ in lp.top}
                             for lp in logprobs],
            "text_offset": offsets}


@dataclass(slots=True)
class Choice:
    """One choice of a rendered, non-streamed answer, as its chunks build it up."""

    index: int
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class Rendering:
    """How to answer one request: its id, the client's model name, when it arrived."""

    request_id: str
    model: str
    created: int
    is_chat: bool
    include_usage: bool = False
    continuous_usage: bool = False
    _texts_sent: dict[int, int] = field(default_factory=dict)  # choice -> characters sent

    @property
    def object_name(self) -> str:
        return "chat.completion.chunk" if self.is_chat else "text_completion"

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.request_id, "object": kind, "created": self.created,
                "model": self.model}

    # ---- streamed -------------------------------------------------------------------------

    def role_chunk(self, index: int) -> bytes:
        """The first event of a chat choice: its role, no content (as OpenAI sends)."""
        body = {**self._head(self.object_name), "choices": [{
            "index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
            "finish_reason": None}]}
        if self.include_usage:
            body["usage"] = None
        return b"data: " + _DUMPS(body) + b"\n\n"

    def chunk(self, chunk: GenerateChunk, usage: Usage | None) -> bytes:
        """One event of a rendered stream."""
        index = chunk.index
        choice: dict[str, Any] = {"index": index}
        if self.is_chat:
            choice["delta"] = {"content": chunk.text}
        else:
            choice["text"] = chunk.text
        sent = self._texts_sent.get(index, 0)
        choice["logprobs"] = (logprobs_json(chunk.logprobs, self.is_chat, sent)
                              if chunk.logprobs else None)
        choice["finish_reason"] = chunk.finish_reason
        self._texts_sent[index] = sent + len(chunk.text)
        body = {**self._head(self.object_name), "choices": [choice]}
        if self.include_usage:
            body["usage"] = usage_json(usage) if self.continuous_usage else None
        return b"data: " + _DUMPS(body) + b"\n\n"

    def usage_chunk(self, usage: Usage | None, num_cached_tokens: int | None) -> bytes:
        """The final usage-only event (`stream_options.include_usage`)."""
        body = {**self._head(self.object_name), "choices": [],
                "usage": usage_json(usage, num_cached_tokens)}
        return b"data: " + _DUMPS(body) + b"\n\n"

    def forward_chunk(self, payload: Mapping[str, Any], index_offset: int = 0) -> bytes | None:
        """A remote backend's event, as the client sees it (None: nothing the client asked
        for); `index_offset` moves its choices (a prompt of a list)."""
        body = dict(payload)
        body.update(id=self.request_id, model=self.model, created=self.created)
        body.setdefault("object", self.object_name)
        if index_offset:
            body["choices"] = _offset(body.get("choices") or [], index_offset)
        if "usage" in body:
            if not self.include_usage:
                del body["usage"]
                if not body.get("choices"):
                    return None  # the usage-only event the gateway asked for itself
            elif not self.continuous_usage and body.get("choices"):
                body["usage"] = None
        return b"data: " + _DUMPS(body) + b"\n\n"

    # ---- whole ----------------------------------------------------------------------------

    def whole(self, choices: Sequence[Choice], usage: Usage | None,
              num_cached_tokens: int | None) -> bytes:
        """The non-streamed answer from an engine's chunks."""
        out = []
        for c in sorted(choices, key=lambda c: c.index):
            text = "".join(c.text)
            item: dict[str, Any] = {"index": c.index}
            if self.is_chat:
                item["message"] = {"role": "assistant", "content": text, "refusal": None,
                                   "tool_calls": []}
            else:
                item["text"] = text
            item["logprobs"] = logprobs_json(c.logprobs, self.is_chat) if c.logprobs else None
            item["finish_reason"] = c.finish_reason
            out.append(item)
        kind = "chat.completion" if self.is_chat else "text_completion"
        body = {**self._head(kind), "choices": out,
                "usage": usage_json(usage, num_cached_tokens)}
        return _DUMPS(body)

    def forward_whole(self, payload: Mapping[str, Any]) -> bytes:
        """A remote backend's whole answer, as the client sees it."""
        body = dict(payload)
        body.update(id=self.request_id, model=self.model, created=self.created)
        body.setdefault("object", "chat.completion" if self.is_chat else "text_completion")
        return _DUMPS(body)

    def merge_whole(self, payloads: Sequence[tuple[int, Mapping[str, Any]]],
                    rendered: Sequence[Choice], usage: Mapping[str, Any] | None) -> bytes:
        """Whole answers of several prompts (a completions list) as one: every choice, in
        order, the usage of all, and the first answer's other fields (system_fingerprint,
        a backend's own)."""
        items = [c for offset, p in payloads for c in _offset(p.get("choices") or [], offset)]
        items += json.loads(self.whole(rendered, None, None))["choices"] if rendered else []
        items.sort(key=lambda c: c.get("index", 0))
        kind = "chat.completion" if self.is_chat else "text_completion"
        first = payloads[0][1] if payloads else {}
        return _DUMPS({**first, **self._head(kind), "choices": items, "usage": usage})


def _offset(choices: Sequence[Mapping[str, Any]], offset: int) -> list[dict[str, Any]]:
    return [{**c, "index": c.get("index", 0) + offset} for c in choices]
