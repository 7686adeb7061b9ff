"""OpenAI request bodies -> validated `ApiRequest`s.

The gateway reads and checks, field by field, what it uses itself (routing, admission, the
in-process engine's sampling): every wrong type or range is a `RequestError` naming the field
(`param`), as OpenAI's API does, before any backend sees the request. The body is kept whole
(`GenerateRequest.body`): a remote OpenAI-compatible backend receives every field unchanged,
Shunter's own `program_id` and `session_id` excepted, and an in-process engine refuses what it
does not implement (`EngineClient.unsupported`). Responses are rendered in `render.py`.

Read here: `model`, `prompt` (a string, token ids, or a list of either: one choice set per
prompt) | `messages` (roles, text parts, assistant `tool_calls`, `tool_call_id`), `max_tokens`
(chat also `max_completion_tokens`), `temperature`, `top_p`, `n`, `stream`,
`stream_options.include_usage` / `continuous_usage_stats`, `stop`, `seed`, `logprobs` and
`top_logprobs`, `echo`, `presence_penalty`, `frequency_penalty`, `logit_bias`,
`response_format`, vLLM's `top_k`, `min_p`, `repetition_penalty`, `min_tokens`,
`stop_token_ids`, `priority`, `ignore_eos`, and Shunter's `program_id` (the agent program a
call belongs to, for `plas`; also the `X-Program-Id` header) and `session_id` (the
conversation; also `X-Session-Id`). Text anywhere in the body must be valid Unicode (a lone
surrogate such as "\\ud800" is a 400 naming where it is: `decode_body` checks bodies that hold
such an escape).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shunter.backend.protocol import ChatMessage, GenerateRequest
from shunter.errors import RequestError
from shunter.gateway.jsonio import loads

__all__ = ["GATEWAY_FIELDS", "ApiRequest", "decode_body", "parse_request"]

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_STOP_STRINGS = 4
MAX_N = 128
MAX_LOGPROBS = 20  # vLLM's cap (OpenAI's: 20 for chat top_logprobs, 5 for completions)
INT64_MIN, UINT64_MAX = -(1 << 63), (1 << 64) - 1  # what a seed may be (torch's range)
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
GATEWAY_FIELDS = frozenset({"program_id", "session_id"})  # Shunter's: never forwarded
MAX_JSON_DEPTH = 64  # objects and arrays inside each other, at most
MAX_TOKEN_ID_DIGITS = 20  # a logit_bias key (a uint64 has 20)
# longer than any model's context; a tenant's token bucket reserves max_tokens, in floats that
# must stay exact (a max_tokens of 1e300 locked a tenant out, one of 10**400 crashed it)
MAX_OUTPUT_TOKENS = (1 << 31) - 1


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def decode_body(raw: bytes) -> Any:
    """The JSON of a request body; a RequestError (400) for anything that is not JSON, or
    that holds a lone surrogate (only a \\udXXX escape can put one there: raw UTF-8 cannot)."""
    try:
        body = loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed JSON body: {exc}", code="invalid_json") from None
    except RecursionError:
        raise RequestError("malformed JSON body: objects and arrays nested too deeply",
                           code="invalid_json") from None
    if _SURROGATE_ESCAPE.search(raw):
        _check_text(body, "")
    return body


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """A validated API call: what to generate (one `GenerateRequest` per prompt of a
    completions list), and how to answer."""

    generates: tuple[GenerateRequest, ...]
    is_chat: bool
    is_stream: bool
    include_usage: bool
    continuous_usage: bool  # vLLM's stream_options.continuous_usage_stats
    num_prompt_chars: int

    @property
    def generate(self) -> GenerateRequest:
        return self.generates[0]


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean",
             list: "an array", dict: "an object"}
    seq = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in seq))


def _field(body: Mapping[str, Any], name: str, kinds: type | tuple[type, ...], default: Any,
           param: str | None = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    seq = kinds if isinstance(kinds, tuple) else (kinds,)
    if int in seq and float not in seq and isinstance(value, float) and value.is_integer():
        return int(value)  # JSON Schema's integer: 2.0 is 2 (as pydantic, so vLLM, reads it)
    # bool is an int in Python; a JSON true is not a number
    if (isinstance(value, bool) and bool not in seq) or not isinstance(value, seq):
        got = "a boolean" if isinstance(value, bool) else type(value).__name__
        raise RequestError(f"'{param or name}' must be {_kind_name(kinds)}, got {got}",
                           param=param or name)
    return value


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float, *,
            low_open: bool = False) -> float:
    value = _field(body, name, (int, float), default)
    below = value <= low if low_open else value < low
    if below or value > high or math.isnan(value):  # (an int too big for a float is out)
        bracket = "(" if low_open else "["
        raise RequestError(f"'{name}' must be in {bracket}{low}, {high}], got {value}", param=name)
    return float(value)


def _int(body: Mapping[str, Any], name: str, default: int | None, low: int,
         high: int | None = None) -> int | None:
    value = _field(body, name, int, default)
    if value is not None and (value < low or (high is not None and value > high)):
        limits = f">= {low}" if high is None else f"between {low} and {high}"
        raise RequestError(f"'{name}' must be {limits}, got {value}", param=name)
    return value


def _check_text(value: Any, where: str, depth: int = 0) -> None:
    """Every string inside `value` is valid Unicode (encodes to UTF-8); nesting is bounded."""
    if depth > MAX_JSON_DEPTH:
        raise RequestError(f"the body nests objects and arrays more than {MAX_JSON_DEPTH} deep "
                           f"(at '{where}')", param=where or None, code="invalid_json")
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise RequestError(f"'{where}' holds an invalid Unicode character (a lone "
                               "surrogate)", param=where) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where, depth + 1)
            _check_text(item, f"{where}.{key}" if where else str(key), depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{where}[{i}]", depth + 1)


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = _field(body, "stop", (str, list), [])
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"'stop' must be a non-empty string or up to {MAX_STOP_STRINGS} of them",
                           param="stop")
    return tuple(stops)


def _is_token_id(value: Any) -> bool:
    """An integer >= 0 (JSON Schema's: 2.0 is one; a boolean is not)."""
    return ((isinstance(value, int) and not isinstance(value, bool))
            or (isinstance(value, float) and value.is_integer())) and value >= 0


def _token_ids(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, list) and value and all(_is_token_id(t) for t in value):
        return tuple(int(t) for t in value)
    return None


def _prompts(body: Mapping[str, Any]) -> list[str | tuple[int, ...]]:
    """A completions prompt: a string, token ids, or a non-empty list of either."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif _token_ids(prompt) is not None:
        items = [prompt]
    elif isinstance(prompt, list) and prompt:
        items = prompt
    else:
        raise RequestError("'prompt' must be a string, an array of token ids, or a non-empty "
                           "array of either", param="prompt")
    out: list[str | tuple[int, ...]] = []
    for i, item in enumerate(items):
        ids = _token_ids(item)
        if not (isinstance(item, str) and item) and ids is None:
            where = "prompt" if len(items) == 1 else f"prompt[{i}]"
            raise RequestError(f"'{where}' must be a non-empty string or an array of token ids "
                               ">= 0", param=where)
        out.append(item if isinstance(item, str) else ids)  # type: ignore[arg-type]
    return out


def _content(message: Mapping[str, Any], index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) == len(content) and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    if content is None and message.get("role") == "assistant" and message.get("tool_calls"):
        return ""
    if content is None and message.get("role") == "assistant":
        return ""
    raise RequestError(f"messages[{index}].content must be a string or text parts",
                       param=f"messages[{index}].content")


def _messages(body: Mapping[str, Any]) -> tuple[ChatMessage, ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array", param="messages")
    out = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise RequestError(f"messages[{i}] must be an object whose role is one of "
                               f"{', '.join(sorted(CHAT_ROLES))}", param=f"messages[{i}].role")
        if "tool_calls" in message and not isinstance(message["tool_calls"], list | None):
            raise RequestError(f"messages[{i}].tool_calls must be an array",
                               param=f"messages[{i}].tool_calls")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise RequestError(f"messages[{i}].tool_call_id must be a string (a tool message "
                               "answers a tool call)", param=f"messages[{i}].tool_call_id")
        out.append(ChatMessage(role, _content(message, i)))
    return tuple(out)


def _max_tokens(body: Mapping[str, Any], is_chat: bool) -> int | None:
    """Chat's `max_completion_tokens`, if sent, wins over `max_tokens`; both must be valid."""
    default = None if is_chat else DEFAULT_COMPLETION_MAX_TOKENS
    values = {}
    for name in ("max_tokens", "max_completion_tokens") if is_chat else ("max_tokens",):
        values[name] = _int(body, name, default, 1, MAX_OUTPUT_TOKENS)
    return values["max_completion_tokens" if is_chat and "max_completion_tokens" in body
                  else "max_tokens"]


def _logprobs(body: Mapping[str, Any], is_chat: bool) -> int | None:
    """Chat: `logprobs` true, with `top_logprobs` alternatives; completions: `logprobs` = k."""
    if not is_chat:
        return _int(body, "logprobs", None, 0, MAX_LOGPROBS)
    wanted = _field(body, "logprobs", bool, False)
    top = _int(body, "top_logprobs", None, 0, MAX_LOGPROBS)
    if top is not None and not wanted:
        raise RequestError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if wanted else None


def _logit_bias(body: Mapping[str, Any]) -> tuple[tuple[int, float], ...]:
    bias = _field(body, "logit_bias", dict, {})
    out = []
    for key, value in bias.items():
        # ASCII digits only: int() also reads " 1", "+1", "1_0" and "١"
        if not (key.isascii() and key.isdigit() and len(key) <= MAX_TOKEN_ID_DIGITS):
            raise RequestError(f"'logit_bias' keys must be token ids (up to "
                               f"{MAX_TOKEN_ID_DIGITS} digits), got {key!r}", param="logit_bias")
        token = int(key)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not -100 <= value <= 100):
            raise RequestError(f"'logit_bias' maps token ids >= 0 to numbers in [-100, 100], got "
                               f"{key!r}: {value!r}", param="logit_bias")
        out.append((token, float(value)))
    return tuple(out)


def _response_format(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    value = _field(body, "response_format", dict, None)
    if value is not None and not isinstance(value.get("type"), str):
        raise RequestError("'response_format.type' must be a string (text, json_object, "
                           "json_schema)", param="response_format.type")
    return value


# fields most requests do not send: read only when one is there (the gateway's hot path)
_RARE_DEFAULTS: dict[str, Any] = dict(
    seed=None, stop_token_ids=(), top_k=None, min_p=0.0, min_tokens=0, presence_penalty=0.0,
    frequency_penalty=0.0, repetition_penalty=1.0, logit_bias=(), logprobs=None, echo=False,
    response_format=None, n=1)
_RARE_FIELDS = frozenset({*_RARE_DEFAULTS, "top_logprobs"})


def _rare(body: Mapping[str, Any], is_chat: bool) -> dict[str, Any]:
    stop_ids = _field(body, "stop_token_ids", list, [])
    if not all(_is_token_id(t) for t in stop_ids):
        raise RequestError("'stop_token_ids' must be an array of token ids >= 0",
                           param="stop_token_ids")
    top_k = _int(body, "top_k", None, -1)
    return dict(
        seed=_int(body, "seed", None, INT64_MIN, UINT64_MAX),
        top_k=None if top_k in (None, -1, 0) else top_k,
        min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
        stop_token_ids=tuple(int(t) for t in stop_ids),
        min_tokens=_int(body, "min_tokens", 0, 0),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 10.0, low_open=True),
        logit_bias=_logit_bias(body), logprobs=_logprobs(body, is_chat),
        echo=False if is_chat else _field(body, "echo", bool, False),
        response_format=_response_format(body), n=_int(body, "n", 1, 1, MAX_N))


def _sampling(body: Mapping[str, Any], is_chat: bool) -> dict[str, Any]:
    rare = _rare(body, is_chat) if not _RARE_FIELDS.isdisjoint(body) else _RARE_DEFAULTS
    return dict(
        max_tokens=_max_tokens(body, is_chat),
        temperature=_number(body, "temperature", 1.0, 0, 2),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True), stop=_stop(body),
        ignore_eos=_field(body, "ignore_eos", bool, False), **rare)


def _id_field(body: Mapping[str, Any], name: str, header_value: str | None) -> str | None:
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
    stream = _field(body, "stream", bool, False)
    options = _field(body, "stream_options", dict, {})
    include_usage = _field(options, "include_usage", bool, False,
                           param="stream_options.include_usage")
    continuous = _field(options, "continuous_usage_stats", bool, False,
                        param="stream_options.continuous_usage_stats")
    messages = _messages(body) if is_chat else None
    prompts: list[str | tuple[int, ...] | None] = [None] if is_chat else _prompts(body)  # type: ignore[list-item]
    num_chars = sum(len(m.content) for m in messages) if messages else \
        sum(len(p) if isinstance(p, str) else 4 * len(p) for p in prompts if p is not None)
    common = dict(model=model, messages=messages, **_sampling(body, is_chat),
                  priority=clamp_priority(_field(body, "priority", int, None)), tenant=tenant,
                  stream=stream, program_id=_id_field(body, "program_id", program_id),
                  session_id=_id_field(body, "session_id", session_id))
    forwarded = body if GATEWAY_FIELDS.isdisjoint(body) else \
        {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
    generates = []
    for i, prompt in enumerate(prompts):
        own = forwarded if len(prompts) == 1 else {**forwarded, "prompt": body["prompt"][i]}
        rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
        generates.append(GenerateRequest(request_id=rid, prompt=prompt, body=own, **common))
    return ApiRequest(tuple(generates), is_chat, stream, stream and include_usage,
                      stream and continuous, num_chars)
