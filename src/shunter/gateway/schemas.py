"""OpenAI request bodies -> validated `ApiRequest`s, and responses and stream chunks back.

Validation is by hand, field by field: every wrong type or range is a `RequestError` naming the
field (`param`), as OpenAI's API does. Unknown fields are ignored, as vLLM does. Supported:
`model`, `prompt` | `messages`, `max_tokens` (chat also `max_completion_tokens`), `temperature`,
`top_p`, `n` (1 only), `stream`, `stream_options.include_usage`, `stop`, `seed`, vLLM's
`priority` and `ignore_eos`, and Shunter's `program_id` (the agent program a call belongs to,
for `plas`; also the `X-Program-Id` header) and `session_id` (the conversation, for session
features of length predictors; also `X-Session-Id`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shunter.backend.protocol import ChatMessage, GenerateRequest, Usage
from shunter.errors import RequestError

__all__ = ["ApiRequest", "chunk_json", "completion_json", "parse_request", "usage_json"]

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_STOP_STRINGS = 4
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """A validated API call: what to generate, and how to answer."""

    generate: GenerateRequest
    is_chat: bool
    is_stream: bool
    include_usage: bool
    num_prompt_chars: int


def _field(body: dict[str, Any], name: str, kinds: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    # bool is an int in Python; a JSON true is not a number
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise RequestError(f"'{name}' must be {_kind_name(kinds)}, got a boolean", param=name)
    if not isinstance(value, kinds):
        raise RequestError(f"'{name}' must be {_kind_name(kinds)}, got {type(value).__name__}",
                           param=name)
    return value


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean",
             list: "an array", dict: "an object"}
    seq = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in seq))


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = float(_field(body, name, (int, float), default))
    if not (low <= value <= high) or math.isnan(value):
        raise RequestError(f"'{name}' must be between {low} and {high}, got {value}", param=name)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = _field(body, "stop", (str, list), [])
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"'stop' must be a non-empty string or up to {MAX_STOP_STRINGS} of them",
                           param="stop")
    return tuple(stops)


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string (one prompt per request)", param="prompt")
    if not prompt:
        raise RequestError("'prompt' must not be empty", param="prompt")
    return prompt


def _content(message: dict[str, Any], index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) == len(content) and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    if content is None and message.get("role") == "assistant":
        return ""
    raise RequestError(f"messages[{index}].content must be a string or text parts",
                       param=f"messages[{index}].content")


def _messages(body: dict[str, Any]) -> tuple[ChatMessage, ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array", param="messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise RequestError(f"messages[{i}] must be an object whose role is one of "
                               f"{', '.join(sorted(CHAT_ROLES))}", param=f"messages[{i}].role")
        out.append(ChatMessage(message["role"], _content(message, i)))
    return tuple(out)


def _max_tokens(body: dict[str, Any], is_chat: bool) -> int | None:
    name = "max_completion_tokens" if is_chat and "max_completion_tokens" in body else "max_tokens"
    default = None if is_chat else DEFAULT_COMPLETION_MAX_TOKENS
    value = _field(body, name, int, default)
    if value is not None and value < 1:
        raise RequestError(f"'{name}' must be >= 1, got {value}", param=name)
    return value


def _id_field(body: dict[str, Any], name: str, header_value: str | None) -> str | None:
    """An id from the body (a non-empty string), else from its header; None if neither."""
    value = _field(body, name, str, None)
    if value is None:
        value = header_value
    if value is not None and not value.strip():
        raise RequestError(f"'{name}' must be a non-empty string", param=name)
    return value


def parse_request(body: Any, *, is_chat: bool, request_id: str, tenant: str,
                  clamp_priority: Callable[[int | None], int] = lambda p: p or 0,
                  program_id: str | None = None, session_id: str | None = None) -> ApiRequest:
    """Validate a decoded JSON body; `tenant` comes from the API key, not the body, and
    `clamp_priority` turns the asked priority (None if absent) into the tenant's allowed one.
    `program_id` and `session_id` are the headers' values, used when the body has none."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' must be a non-empty string", param="model")
    if _field(body, "n", int, 1) != 1:
        raise RequestError("only n=1 is supported", param="n")
    stream = _field(body, "stream", bool, False)
    options = _field(body, "stream_options", dict, {})
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise RequestError("'stream_options.include_usage' must be a boolean",
                           param="stream_options.include_usage")
    seed = _field(body, "seed", int, None)
    prompt = None if is_chat else _prompt(body)
    messages = _messages(body) if is_chat else None
    num_chars = len(prompt) if prompt is not None else sum(len(m.content) for m in messages or ())
    generate = GenerateRequest(
        request_id=request_id, model=model, prompt=prompt, messages=messages,
        max_tokens=_max_tokens(body, is_chat), temperature=_number(body, "temperature", 1.0, 0, 2),
        top_p=_number(body, "top_p", 1.0, 1e-9, 1.0), seed=seed, stop=_stop(body),
        ignore_eos=_field(body, "ignore_eos", bool, False),
        priority=clamp_priority(_field(body, "priority", int, None)), tenant=tenant, stream=stream,
        program_id=_id_field(body, "program_id", program_id),
        session_id=_id_field(body, "session_id", session_id))
    return ApiRequest(generate, is_chat, stream, stream and include_usage, num_chars)


def usage_json(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def completion_json(api: ApiRequest, created: int, text: str, finish_reason: str | None,
                    usage: Usage | None) -> bytes:
    """The non-streaming answer."""
    if api.is_chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "logprobs": None, "finish_reason": finish_reason}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        kind = "text_completion"
    body = {"id": api.generate.request_id, "object": kind, "created": created,
            "model": api.generate.model, "choices": [choice], "usage": usage_json(usage)}
    return json.dumps(body, separators=(",", ":")).encode()


def chunk_json(api: ApiRequest, created: int, text: str | None, finish_reason: str | None,
               usage: Usage | None = None, *, is_first: bool = False) -> bytes:
    """One SSE event. `text=None` is the final usage-only chunk (empty `choices`)."""
    choices: list[dict[str, Any]] = []
    if text is not None:
        if api.is_chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if is_first \
                else {"content": text}
            choices.append({"index": 0, "delta": delta, "logprobs": None,
                            "finish_reason": finish_reason})
        else:
            choices.append({"index": 0, "text": text, "logprobs": None,
                            "finish_reason": finish_reason})
    body: dict[str, Any] = {
        "id": api.generate.request_id,
        "object": "chat.completion.chunk" if api.is_chat else "text_completion",
        "created": created, "model": api.generate.model, "choices": choices}
    if api.include_usage:
        body["usage"] = usage_json(usage)
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
