"""The gateway's OpenAPI 3.1 description, served at GET /openapi.json.

It describes what the gateway really accepts and answers, and a schema-based fuzz run checks
it (tests/gateway/test_fuzz.py): request bodies field by field as `schemas.py` validates them
(types, ranges, minimum lengths: a body valid here is never a 400 for its shape, one invalid
here always is), every status a route answers with its headers, and the SSE stream of
`stream: true` (in OpenAPI 3.1 an event stream's `schema` describes one event). Unknown fields
pass through to remote backends, so request objects allow additional properties. Bearer auth
is documented only when the gateway has tenants with keys, CORS preflights (OPTIONS) only when
it answers them, and the model names when the caller gives them. Plain dicts, built afresh.
"""

from __future__ import annotations

from typing import Any

from shunter import __version__
from shunter.gateway import schemas

__all__ = ["openapi_spec"]

_JSON = "application/json"
# what `str.strip` removes: an id of only these is blank (`schemas._id_field`)
_BLANK = "".join(f"\\u{ord(c):04x}" for c in map(chr, range(0x3001)) if c.isspace())


def _ref(name: str, kind: str = "schemas") -> dict[str, Any]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _opt(kind: str, **limits: Any) -> dict[str, Any]:
    """An optional scalar: null means the default."""
    return {"type": [kind, "null"], **limits}


def _sampling() -> dict[str, Any]:
    """The fields both generation routes read (`schemas._sampling` and `parse_request`)."""
    non_blank = {"type": ["string", "null"], "pattern": f"[^{_BLANK}]"}
    stop = {"type": "string", "minLength": 1}
    token_id = f"^[0-9]{{1,{schemas.MAX_TOKEN_ID_DIGITS}}}$"
    return {
        "model": _ref("ModelName"),
        "stream": _opt("boolean", default=False),
        "stream_options": {"type": ["object", "null"], "properties": {
            "include_usage": _opt("boolean"), "continuous_usage_stats": _opt("boolean")}},
        "max_tokens": _opt("integer", minimum=1, maximum=schemas.MAX_OUTPUT_TOKENS),
        "min_tokens": _opt("integer", minimum=0),
        "temperature": _opt("number", minimum=0, maximum=2, default=1),
        "top_p": _opt("number", exclusiveMinimum=0, maximum=1, default=1),
        "top_k": _opt("integer", minimum=-1, description="-1 or 0: no cut (vLLM)"),
        "min_p": _opt("number", minimum=0, maximum=1),
        "n": _opt("integer", minimum=1, maximum=schemas.MAX_N, default=1),
        "stop": {"anyOf": [stop, {"type": "array", "maxItems": schemas.MAX_STOP_STRINGS,
                                  "items": stop}, {"type": "null"}]},
        "stop_token_ids": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}},
        "seed": _opt("integer", minimum=schemas.INT64_MIN, maximum=schemas.UINT64_MAX),
        "ignore_eos": _opt("boolean", default=False),
        **{f"{kind}_penalty": _opt("number", minimum=-2, maximum=2)
           for kind in ("presence", "frequency")},
        "repetition_penalty": _opt("number", exclusiveMinimum=0, maximum=10),
        "logit_bias": {"type": ["object", "null"], "propertyNames": {"pattern": token_id},
                       "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}},
        "response_format": {"type": ["object", "null"], "required": ["type"],
                            "properties": {"type": {"type": "string"}}},
        "priority": _opt("integer", description="smaller runs first (vLLM); clamped to the "
                         "tenant's ceiling"),
        "program_id": {**non_blank, "description": "the agent program (plas); else the "
                       "X-Program-Id header; never forwarded"},
        "session_id": {**non_blank, "description": "the conversation; else the X-Session-Id "
                       "header; never forwarded"},
    }


def _message() -> dict[str, Any]:
    part = {"type": "object", "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
    content = [{"type": "string"}, {"type": "array", "items": part}]
    return {
        "type": "object", "required": ["role"],
        "properties": {"role": {"enum": sorted(schemas.CHAT_ROLES)},
                       "content": {"anyOf": [*content, {"type": "null"}]},
                       "tool_calls": {"type": ["array", "null"]}},
        "allOf": [
            # only an assistant turn may leave out its content (it made tool calls)
            {"if": {"properties": {"role": {"const": "assistant"}}},
             "else": {"required": ["content"], "properties": {"content": {"anyOf": content}}}},
            {"if": {"properties": {"role": {"const": "tool"}}},
             "then": {"required": ["tool_call_id"],
                      "properties": {"tool_call_id": {"type": "string"}}}},
        ]}


def _requests() -> dict[str, Any]:
    ids = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
    text = {"type": "string", "minLength": 1}
    prompt = {"anyOf": [text, ids, {"type": "array", "minItems": 1,
                                    "items": {"anyOf": [text, ids]}}],
              "description": "a string, token ids, or a list of either (one choice set each)"}
    top = _opt("integer", minimum=0, maximum=schemas.MAX_LOGPROBS)
    completion = {**_sampling(), "prompt": prompt, "echo": _opt("boolean", default=False),
                  "logprobs": top}
    chat = {**_sampling(), "messages": {"type": "array", "minItems": 1, "items": _message()},
            "max_completion_tokens": _opt("integer", minimum=1, maximum=schemas.MAX_OUTPUT_TOKENS,
                                          description="wins over max_tokens"),
            "logprobs": _opt("boolean", default=False), "top_logprobs": top}
    needs_logprobs = {  # top_logprobs asks for logprobs: true
        "if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}},
        "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}}
    forward = {"model": {"anyOf": [_ref("ModelName"), {"type": "null"}]}}
    return {
        "CompletionRequest": {"type": "object", "required": ["model", "prompt"],
                              "properties": completion},
        "ChatCompletionRequest": {"type": "object", "required": ["model", "messages"],
                                  "properties": chat, **needs_logprobs},
        "ForwardRequest": {"type": "object", "properties": forward,
                           "description": "the backend's own request (vLLM's), passed whole"},
        "ResponsesRequest": {"type": "object", "properties": {**forward, "stream": {
            "enum": [False, None], "description": "a stream is not forwarded yet"}}},
    }


def _answers() -> dict[str, Any]:
    string, integer = {"type": "string"}, {"type": "integer"}
    usage = {"type": ["object", "null"], "properties": {
        "prompt_tokens": integer, "completion_tokens": integer, "total_tokens": integer}}
    head = {"id": string, "created": integer, "model": string, "usage": usage}

    def answer(kind: str, choice: dict[str, Any]) -> dict[str, Any]:
        item = {"type": "object", "required": ["index"], "properties": {
            "index": {"type": "integer", "minimum": 0}, "logprobs": {"type": ["object", "null"]},
            "finish_reason": {"type": ["string", "null"]}, **choice}}
        return {"type": "object", "required": ["id", "object", "created", "model", "choices"],
                "properties": {**head, "object": {"const": kind},
                               "choices": {"type": "array", "items": item}}}
    message = {"type": "object", "properties": {"role": string, "tool_calls": {
        "type": ["array", "null"]}, "content": {"type": ["string", "null"]}}}
    return {
        "Completion": answer("text_completion", {"text": string}),
        "ChatCompletion": answer("chat.completion", {"message": message}),
        "CompletionChunk": answer("text_completion", {"text": string}),
        "ChatCompletionChunk": answer("chat.completion.chunk", {"delta": message}),
        "Model": {"type": "object", "required": ["id", "object", "created", "owned_by"],
                  "properties": {"id": string, "object": {"const": "model"},
                                 "created": integer, "owned_by": string, "root": string,
                                 "parent": {"type": ["string", "null"]},
                                 "max_model_len": integer}},
        "ModelList": {"type": "object", "required": ["object", "data"], "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}},
        "Health": {"type": "object", "required": ["status", "healthy"], "properties": {
            "status": string, "healthy": {"type": "array", "items": string}}},
        "Version": {"type": "object", "required": ["version"], "properties": {"version": string}},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"], "properties": {
                "message": string, "type": string, "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]}}}}},
        "BackendAnswer": {"description": "the backend's own JSON answer"},
    }


def _headers() -> dict[str, Any]:
    string = {"type": "string"}
    limits = {f"x-ratelimit-{what}-{unit}": {"schema": string, "description": "a tenant with "
                                             "rate limits: OpenAI's header"}
              for what in ("limit", "remaining", "reset") for unit in ("requests", "tokens")}
    return {
        "x-request-id": {"description": "the client's own x-request-id if it sent a printable "
                         "one (up to 256 characters), else the gateway's", "required": True,
                         "schema": {"type": "string", "minLength": 1}},
        "retry-after": {"description": "seconds to wait before retrying", "required": True,
                        "schema": {"type": "integer", "minimum": 1}},
        "allow": {"description": "the methods the path takes", "required": True, "schema": string},
        **limits,
    }


def _response(text: str, schema: dict[str, Any] | None = None, media_type: str = _JSON,
              headers: tuple[str, ...] = ()) -> dict[str, Any]:
    names = ("x-request-id", *headers)
    out: dict[str, Any] = {"description": text,
                           "headers": {name: _ref(name, "headers") for name in names}}
    if schema is not None:
        out["content"] = {media_type: {"schema": schema}}
    return out


def _error_responses() -> dict[str, Any]:
    """Every error status, as components/responses/E<status>."""
    texts = {"400": "invalid request: `error.param` names the field; also a prompt over the "
                    "gateway's limit (code context_length_exceeded), a parameter no backend "
                    "supports (unsupported_parameter) or a body that is not JSON (or nested too "
                    "deep to parse) or holds a lone surrogate",
             "401": "missing or invalid API key (for /metrics: its metrics_key)",
             "403": "/metrics on a gateway with tenants and no metrics_key (code "
                    "metrics_key_required)",
             "404": "unknown model (code model_not_found), or no backend serves the path",
             "413": "body over the gateway's limit",
             "429": "rate limited, over the tenant's concurrent requests, shed, or not "
                    "servable in time",
             "4XX": "a backend's own 4xx for the request, passed through",
             "502": "every backend attempt failed",
             "503": "no backend can serve (every one down or ejected: code no_backend), "
                    "or draining"}
    return {f"E{code}": _response(text, _ref("Error"), headers=(
        ("retry-after",) if code in ("429", "503") else ())) for code, text in texts.items()}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _ref(f"E{code}", "responses") for code in codes}


def _sse(chunk: str) -> dict[str, Any]:
    """One event of a stream: a chunk, an error after the stream began, or the final [DONE]."""
    payload = {"contentMediaType": _JSON,
               "contentSchema": {"anyOf": [_ref(chunk), _ref("Error")]}}
    return {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}},
            "if": {"properties": {"data": {"const": "[DONE]"}}},
            "else": {"properties": {"data": payload}}}


def _post(summary: str, request: str, ok: dict[str, Any], errors: dict[str, Any]
          ) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "parameters": [_ref("x-request-id", "parameters")],
        "requestBody": {"required": True, "content": {_JSON: {"schema": _ref(request)}}},
        "responses": {"200": ok, **errors}}}


def _generate(summary: str, request: str, whole: str, chunk: str,
              auth: tuple[str, ...]) -> dict[str, Any]:
    limits = tuple(name for name in _headers() if name.startswith("x-ratelimit-"))
    ok = _response("the answer; with `stream: true` an SSE stream of chunks ending in "
                   "`data: [DONE]`", _ref(whole), headers=limits)
    ok["content"]["text/event-stream"] = {"schema": _sse(chunk)}
    return _post(summary, request, ok, _errors("400", *auth, "404", "413", "429", "4XX",
                                               "502", "503"))


def _forward(summary: str, auth: tuple[str, ...], request: str = "ForwardRequest"
             ) -> dict[str, Any]:
    backend = _response("the backend's own status and answer, passed through",
                        _ref("BackendAnswer"))
    operation = _post(summary, request, backend, {
        **_errors("400", *auth, "404", "413", "502", "503"), "default": backend})
    operation["post"]["description"] = "Forwarded whole to the first routable backend that "\
        "serves the path."
    return operation


def _get(summary: str, ok: dict[str, Any], errors: dict[str, Any] | None = None, *,
         is_public: bool = True) -> dict[str, Any]:
    operation = {"summary": summary, "parameters": [_ref("x-request-id", "parameters")],
                 "responses": {"200": ok, **(errors or {})}}
    if is_public:
        operation["security"] = []
    return {"get": operation}


def _preflight(methods: str, path_parameters: list[dict[str, Any]]) -> dict[str, Any]:
    cors = {f"access-control-{name}": {"required": True, "schema": {"type": "string"}}
            for name in ("allow-origin", "allow-methods", "allow-headers", "max-age")}
    header = {"in": "header", "schema": {"type": "string"}}
    ok = _response("a preflight from an allowed origin")
    ok["headers"].update(cors)
    return {"summary": "CORS preflight", "security": [], "parameters": [
        *path_parameters, {"name": "origin", "required": True, **header},
        {"name": "access-control-request-method", "required": False, **header}],
        "responses": {"204": ok, "405": _response(
            f"not a preflight (no Origin), or from an origin not allowed: the path takes "
            f"{methods}", _ref("Error"), headers=("allow",))}}


def _paths(auth: tuple[str, ...]) -> dict[str, Any]:
    model = _get("One served model", _response("the model", _ref("Model")),
                 _errors(*auth, "404"), is_public=False)
    model["get"]["parameters"].append({"name": "model", "in": "path", "required": True,
                                       "schema": _ref("ModelName")})
    sick = _response("no healthy backend (a Health body), or draining (an Error, with "
                     "Retry-After)", {"anyOf": [_ref("Health"), _ref("Error")]})
    sick["headers"]["retry-after"] = {**_headers()["retry-after"], "required": False}
    return {
        "/v1/completions": _generate("Create a completion", "CompletionRequest", "Completion",
                                     "CompletionChunk", auth),
        "/v1/chat/completions": _generate("Create a chat completion", "ChatCompletionRequest",
                                          "ChatCompletion", "ChatCompletionChunk", auth),
        "/tokenize": _forward("Tokenize (vLLM's)", auth),
        "/detokenize": _forward("Detokenize (vLLM's)", auth),
        "/v1/embeddings": _forward("Create embeddings", auth),
        "/v1/responses": _forward("Create a response", auth, "ResponsesRequest"),
        "/v1/models": _get("The served models", _response("them", _ref("ModelList")),
                           _errors(*auth), is_public=False),
        "/v1/models/{model}": model,
        "/health": _get("200 when at least one backend is healthy, else 503", _response(
            "at least one backend is healthy", _ref("Health")), {"503": sick}),
        "/metrics": _get("Prometheus metrics (with tenants: behind [server] metrics_key, "
                         "sent as a bearer key)",
                         _response("them", {"type": "string"}, "text/plain"),
                         _errors("401", "403") if auth else None),
        "/openapi.json": _get("This document", _response("OpenAPI 3.1", {
            "type": "object", "required": ["openapi", "info", "paths"]})),
        "/version": _get("The gateway's version", _response("it", _ref("Version"))),
    }


def openapi_spec(*, has_keys: bool = True, has_cors: bool = False,
                 models: tuple[str, ...] = ()) -> dict[str, Any]:
    """A fresh copy of the spec (callers may change it): bearer auth only when the gateway
    has tenants with keys (`has_keys`), OPTIONS preflights only when it answers them
    (`has_cors`), and the served model names, if given (`models`)."""
    paths = _paths(("401",) if has_keys else ())
    if has_cors:
        for path, item in paths.items():
            # a preflight is answered for any path, whatever model it names
            names = [{"name": "model", "in": "path", "required": True,
                      "schema": {"type": "string"}}] if "{model}" in path else []
            item["options"] = _preflight("GET, HEAD" if "get" in item else "POST", names)
    name = {"type": "string", "minLength": 1, **({"enum": list(models)} if models else {}),
            "description": "a served model (GET /v1/models); another is a 404"}
    components: dict[str, Any] = {
        "schemas": {**_requests(), **_answers(), "ModelName": name},
        "responses": _error_responses(),
        "headers": _headers(),
        "parameters": {"x-request-id": {
            "name": "x-request-id", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "echoed back if printable and at most 256 characters"}},
    }
    spec: dict[str, Any] = {"openapi": "3.1.0", "components": components, "paths": paths, "info": {
        "title": "Shunter gateway", "version": __version__,
        "description": "OpenAI-compatible API in front of scheduled LLM backends."}}
    if has_keys:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        spec["security"] = [{"bearer": []}]
    return spec
