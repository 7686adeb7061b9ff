"""What an OpenAI-compatible backend answers, as the gateway reads it: error answers, whole
answers and SSE events become `GenerateChunk`s (the event itself kept as the chunk's
`payload`), and a streamed body fed as it arrives becomes its events (`SseEvents`, one parser
for both of `remote.py`'s transports). Valid JSON of the wrong shape is a BackendError like any
broken stream, so that the request fails over instead of being cut."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from shunter.backend.protocol import BackendError, GenerateChunk, Usage
from shunter.gateway.jsonio import loads
from shunter.gateway.resume import split_token_ids

__all__ = ["SseEvents", "backend_error", "event_chunk", "whole_chunk"]


def _error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        error = body.get("error", body)
        return str(error.get("message", error) if isinstance(error, dict) else error)
    except (ValueError, AttributeError):
        return raw[:500].decode("utf-8", "replace")


def backend_error(raw: bytes, status: int) -> BackendError:
    """A backend's error answer: its message, `param` and (string) `code`, for the client."""
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        error = None
    found = {k: error.get(k) for k in ("param", "code")} if isinstance(error, dict) else {}
    return BackendError(_error_message(raw), status_code=status,
                        **{k: v for k, v in found.items() if isinstance(v, str)})


def _has_tool_calls(choices: Any, key: str) -> bool:
    return any((c.get(key) or {}).get("tool_calls") for c in choices)


def _shape_error(obj: Any, is_chat: bool, part: str) -> str | None:
    """What is wrong with the shape of a backend's event or answer (valid JSON of the wrong
    shape must fail over like any broken stream, not cut it); None when it is right."""
    if not isinstance(obj, dict):
        return f"an event that is not an object ({type(obj).__name__})"
    choices = obj.get("choices", [])
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        return "'choices' that is not an array of objects"
    for c in choices:
        inner = c.get(part) if is_chat else c
        if is_chat and inner is not None and not isinstance(inner, dict):
            return f"a choice whose {part} is not an object"
        text = (inner or {}).get("content" if is_chat else "text")
        if text is not None and not isinstance(text, str):
            return "a choice whose text is not a string"
        if not isinstance(c.get("index", 0), int):
            return "a choice whose index is not an integer"
    usage = obj.get("usage")
    if usage is not None and not (isinstance(usage, dict) and all(
            isinstance(usage.get(k, 0), int) for k in ("prompt_tokens", "completion_tokens"))):
        return "a 'usage' that is not token counts"
    return None


def event_chunk(obj: Any, is_chat: bool, ids: int = 0) -> GenerateChunk | None:
    """One SSE event as a chunk: the event itself (`payload`) plus what the gateway reads.
    `ids`: 0 no token ids asked for; 1 asked for by the gateway (taken out of the event); 2
    asked for by the client (left in); 3 a resumed stream (rendered by the gateway: no
    payload)."""
    if isinstance(obj, dict) and "error" in obj:
        raise BackendError(f"backend error mid-stream: {_error_message(json.dumps(obj).encode())}")
    wrong = _shape_error(obj, is_chat, "delta")
    if wrong is not None:
        raise BackendError(f"backend sent {wrong}: {json.dumps(obj)[:200]}")
    token_ids = prompt_ids = None
    if ids:
        try:
            token_ids, prompt_ids = split_token_ids(obj, keep=ids == 2)
        except ValueError as exc:
            raise BackendError(f"backend sent {exc}") from None
    usage = obj.get("usage")
    choices = obj.get("choices") or ()
    text, finish, index = "", None, 0
    if choices:
        choice = choices[0]
        text = (choice.get("delta") or {}).get("content") or "" if is_chat \
            else choice.get("text") or ""
        finish = choice.get("finish_reason")
        index = choice.get("index", 0)
    parsed = Usage(usage["prompt_tokens"], usage.get("completion_tokens") or 0) if usage else None
    cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
    return GenerateChunk(text, finish, parsed, cached, index=index,
                         payload=None if ids == 3 else obj,
                         has_tool_calls=is_chat and _has_tool_calls(choices, "delta"),
                         token_ids=token_ids, prompt_token_ids=prompt_ids)


def whole_chunk(body: Any, is_chat: bool) -> GenerateChunk:
    """A whole answer as one chunk (its `payload` is the answer)."""
    wrong = _shape_error(body, is_chat, "message")
    if wrong is not None or not body.get("choices"):
        raise BackendError(f"backend answered with {wrong or 'no choices'}: "
                           f"{json.dumps(body)[:200]}")
    choices = body["choices"]
    choice = choices[0]
    text = (choice.get("message") or {}).get("content") or "" if is_chat else choice.get("text", "")
    usage = body.get("usage")
    cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
    return GenerateChunk(text or "", choice.get("finish_reason"),
                         Usage(usage["prompt_tokens"], usage["completion_tokens"]) if usage
                         else None, cached, payload=body,
                         has_tool_calls=is_chat and _has_tool_calls(choices, "message"))




class SseEvents:
    """A streamed body's `data:` events as chunks, fed as the body arrives (lines may span
    reads). `is_done` once [DONE] came; `check_end` when the body ended without it."""

    __slots__ = ("ids", "is_chat", "is_done", "is_finished", "rest")

    def __init__(self, is_chat: bool, ids: int) -> None:
        self.is_chat, self.ids = is_chat, ids
        self.is_done = self.is_finished = False
        self.rest = b""

    def feed(self, data: bytes) -> Iterator[GenerateChunk]:
        lines = (self.rest + data if self.rest else data).split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            event = line[5:].strip()
            if event == b"[DONE]":
                self.is_done = True
                return
            chunk = event_chunk(loads(event), self.is_chat, self.ids)
            if chunk is not None:
                self.is_finished = self.is_finished or chunk.finish_reason is not None
                yield chunk

    def check_end(self) -> None:
        """The body ended without [DONE]: fine after a finish, else the backend failed."""
        if not self.is_finished:
            raise BackendError("backend stream ended before the request finished")
