"""The gateway's OpenAPI 3.1 description, served at GET /openapi.json."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_spec"]

_SAMPLING: dict[str, Any] = {
    "model": {"type": "string"},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 1},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1},
    "n": {"type": "integer", "enum": [1], "default": 1},
    "stream": {"type": "boolean", "default": False},
    "stream_options": {"type": "object",
                       "properties": {"include_usage": {"type": "boolean"}}},
    "stop": {"oneOf": [{"type": "string"},
                       {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
    "seed": {"type": "integer"},
    "priority": {"type": "integer", "default": 0,
                 "description": "smaller runs first (vLLM); clamped to the tenant's ceiling"},
    "ignore_eos": {"type": "boolean", "default": False},
}

_USAGE = {"type": "object", "properties": {
    "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
    "total_tokens": {"type": "integer"}}}

_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "type": {"type": "string"},
    "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def _errors() -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    texts = {"400": "invalid request", "401": "missing or invalid API key",
             "404": "unknown model", "413": "body too large",
             "429": "rate limited, shed or overloaded (see Retry-After)",
             "502": "every backend attempt failed", "503": "no healthy backend, or draining"}
    return {code: {"description": text, **ref} for code, text in texts.items()}


def _post(summary: str, request: str, response: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}}},
        "responses": {"200": {"description": "a response, or an SSE stream when stream=true",
                              "content": {
                                  "application/json": {"schema": {
                                      "$ref": f"#/components/schemas/{response}"}},
                                  "text/event-stream": {"schema": {"type": "string"}}}},
                      **_errors()}}}


def _get(summary: str, content_type: str = "application/json") -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {
        "200": {"description": summary, "content": {content_type: {"schema": {}}}}}}}


def openapi_spec(*, has_keys: bool = True) -> dict[str, Any]:
    """A fresh copy of the spec (callers may change it); bearer auth only when the gateway
    has tenants with keys (`has_keys`)."""
    message = {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"type": "string",
                 "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Shunter gateway", "version": "0.1.0",
                 "description": "OpenAI-compatible API in front of scheduled LLM backends."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "CompletionRequest": {"type": "object", "required": ["model", "prompt"],
                                      "properties": {**_SAMPLING, "prompt": {"type": "string"}}},
                "ChatCompletionRequest": {"type": "object", "required": ["model", "messages"],
                                          "properties": {**_SAMPLING,
                                                         "max_completion_tokens": {"type": "integer"},
                                                         "messages": {"type": "array",
                                                                      "items": message}}},
                "Completion": {"type": "object", "properties": {
                    "id": {"type": "string"}, "object": {"const": "text_completion"},
                    "choices": {"type": "array"}, "usage": _USAGE}},
                "ChatCompletion": {"type": "object", "properties": {
                    "id": {"type": "string"}, "object": {"const": "chat.completion"},
                    "choices": {"type": "array"}, "usage": _USAGE}},
                "Error": _ERROR,
            }},
        "security": [{"bearer": []}] if has_keys else [],
        "paths": {
            "/v1/completions": _post("Create a completion", "CompletionRequest", "Completion"),
            "/v1/chat/completions": _post("Create a chat completion", "ChatCompletionRequest",
                                          "ChatCompletion"),
            "/v1/models": _get("List the served models"),
            "/health": _get("200 when at least one backend is healthy, else 503"),
            "/metrics": _get("Prometheus metrics", "text/plain"),
            "/openapi.json": _get("This document"),
        },
    }
