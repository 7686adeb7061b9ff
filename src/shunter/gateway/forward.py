"""What the gateway forwards whole, beside generation: vLLM's /tokenize and /detokenize,
/v1/embeddings and /v1/responses go to the first routable backend that serves the endpoint
(`EngineClient.request`); the model name is the backend's, the answer the backend's own. A
clear 404 names the endpoint when no backend serves it."""

from __future__ import annotations

from typing import Any

from shunter.errors import RequestError
from shunter.gateway.errors import NotFoundError, ServiceUnavailableError
from shunter.gateway.http import JSON_HEADERS, Receive, Scope, Send, header, read_body, send_bytes
from shunter.gateway.schemas import decode_body

__all__ = ["forward_endpoint", "model_entry"]

_STREAMING_UNSUPPORTED = frozenset({"/v1/responses"})


def model_entry(name: str, max_model_len: int | None) -> dict[str, Any]:
    """One model of /v1/models, as vLLM lists it."""
    entry: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": "shunter",
                             "root": name, "parent": None}
    if max_model_len is not None:
        entry["max_model_len"] = max_model_len
    return entry


async def forward_endpoint(app: Any, path: str, scope: Scope, receive: Receive,
                           send: Send) -> None:
    app.tenants.authenticate(header(scope, b"authorization"))
    body = decode_body(await read_body(receive, app.config.max_body_bytes))
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model not in app.config.model_names:
        raise NotFoundError(f"the model '{model}' does not exist; served: "
                            f"{', '.join(app.config.model_names)}", param="model",
                            code="model_not_found")
    if body.get("stream") and path in _STREAMING_UNSUPPORTED:
        raise RequestError(f"'stream' is not forwarded for {path} yet; ask without it",
                           param="stream", code="unsupported_parameter")
    now = app.clock()
    replicas = [r for r in app.pool.replicas if r.can_route(now)]
    if not replicas:
        raise ServiceUnavailableError("no healthy backend", code="no_backend")
    for replica in replicas:
        status, answer = await replica.client.request(path, body)
        if status != 404:
            await send_bytes(send, status, answer, JSON_HEADERS)
            return
    raise NotFoundError(f"no backend of this gateway serves {path}", code="endpoint_not_found")
