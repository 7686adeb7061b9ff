"""What a pass-through gateway must do to a request and its answer, as checks.

A client's HTTP traffic is captured on its side (`CaptureTransport`, an httpx transport every
client library here accepts), a backend's on the other (`RecordingServer.exchanges`). Then:
- the backend received the client's body, every field, apart from the model name, the usage
  options of a stream (`stream_options.include_usage`, `continuous_usage_stats`) and Shunter's
  own fields (`forwarded_body`);
- the client received the backend's answer, every field, apart from id, model and created, the
  usage it did not ask for, and the role of a chat stream's first event per choice (the
  gateway sends its own role events first) (`client_view`, `normalized`);
- and (`same_answers`) what a client gets through the gateway equals what it gets from the
  backend directly.
Values are compared as canonical JSON, so 1, 1.0 and true differ as they do on the wire.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from tests.gateway.recording_server import Exchange, RecordingServer, Script

from shunter.gateway.schemas import GATEWAY_FIELDS

__all__ = ["CaptureTransport", "Rig", "assert_passed_through", "canon", "client_view", "forwarded_body",
           "normalized", "same_answers", "sse_events"]

_SET_BY_GATEWAY = ("id", "model", "created")
_GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")


class _Tee(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, exchange: Exchange) -> None:
        self._inner, self._exchange = inner, exchange

    def __iter__(self) -> Iterator[bytes]:
        for part in self._inner:
            self._exchange.answer += part
            yield part

    def close(self) -> None:
        self._inner.close()


class CaptureTransport(httpx.BaseTransport):
    """An httpx transport that keeps every request body and answer, byte for byte."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.exchanges: list[Exchange] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        exchange = Exchange(request.method, request.url.path, request.read())
        self.exchanges.append(exchange)
        response = self._inner.handle_request(request)
        exchange.status = response.status_code
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_Tee(response.stream, exchange),
                              extensions=response.extensions)

    def close(self) -> None:
        self._inner.close()


def canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def sse_events(raw: bytes) -> list[Any]:
    """The events of an SSE body (JSON objects, and the closing "[DONE]"); comments skipped."""
    out: list[Any] = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip()
            out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def forwarded_body(sent: dict[str, Any]) -> dict[str, Any]:
    """What the backend must receive for `sent` (the backend's model name is the client's)."""
    body = {k: v for k, v in sent.items() if k not in GATEWAY_FIELDS}
    if sent.get("stream"):
        body["stream_options"] = {**(sent.get("stream_options") or {}), "include_usage": True,
                                  "continuous_usage_stats": True}
    return body


def _asked(sent: dict[str, Any]) -> tuple[bool, bool]:
    options = sent.get("stream_options") or {}
    include = bool(options.get("include_usage"))
    return include, include and bool(options.get("continuous_usage_stats"))


_EVERY_EVENT_FIELDS = ("id", "object", "created", "model", "choices", "usage",
                       "system_fingerprint", "service_tier", "obfuscation")


def _is_role_event(event: dict[str, Any]) -> bool:
    """A chat stream's first event of a choice: its role and nothing else to say."""
    choices = event.get("choices") or []
    return bool(choices) and all(
        "role" in (c.get("delta") or {}) and c.get("finish_reason") is None
        and not c.get("logprobs") and not any(v for k, v in c["delta"].items() if k != "role")
        for c in choices)


def _without_role(event: dict[str, Any]) -> dict[str, Any] | None:
    """A role event less its role; None if it then tells nothing (no field beyond those of
    every event, or only nulls)."""
    if all(v is None for k, v in event.items() if k not in _EVERY_EVENT_FIELDS):
        return None
    return {**event, "choices": [{**c, "delta": {k: v for k, v in c["delta"].items()
                                                 if k != "role"}} for c in event["choices"]]}


def client_view(events: list[Any], sent: dict[str, Any]) -> list[Any]:
    """The events a client must get for the backend's `events` (ids not yet normalized): the
    usage it did not ask for hidden; the system_fingerprint of a hidden usage event on the
    terminal events that lack one (where a backend asked without include_usage puts it)."""
    include, continuous = _asked(sent)
    hidden_fingerprint = next((e.get("system_fingerprint") for e in events
                               if isinstance(e, dict) and not e.get("choices")
                               and not include), None)
    out: list[Any] = []
    for event in events:
        if not isinstance(event, dict):
            out.append(event)
            continue
        event = dict(event)
        if not event.get("choices"):
            if include:
                out.append(event)
            continue
        if "usage" in event and not include:
            del event["usage"]
        elif "usage" in event and not continuous:
            event["usage"] = None
        is_end = any(c.get("finish_reason") is not None for c in event["choices"])
        if is_end and hidden_fingerprint and "system_fingerprint" not in event:
            event["system_fingerprint"] = hidden_fingerprint
        out.append(event)
    return out


def normalized(events: list[Any]) -> list[Any]:
    """Events without what the gateway sets (id, model, created) and `"usage": null`; a role
    event without its role (the gateway sends its own) and dropped if that leaves nothing;
    each choice's events in their order (a choice's events may move against another's)."""
    out = []
    for event in events:
        if isinstance(event, dict) and _is_role_event(event):
            event = _without_role(event)
        if isinstance(event, dict):
            event = {k: v for k, v in event.items()
                     if k not in _SET_BY_GATEWAY and not (k == "usage" and v is None)}
        if event is not None:
            out.append(event)

    def choice_of(e: Any) -> int:
        choices = e.get("choices") if isinstance(e, dict) else None
        return choices[0].get("index", 0) if choices else 1 << 30  # usage, [DONE] last
    return sorted(out, key=choice_of)


def _whole(raw: bytes) -> dict[str, Any]:
    return {k: v for k, v in json.loads(raw).items() if k not in _SET_BY_GATEWAY}


def assert_passed_through(client: Exchange, backend: Exchange, model: str) -> None:
    """The backend got what the client sent, and the client what the backend answered."""
    sent = json.loads(client.body)
    assert client.status == backend.status == 200
    if client.path not in _GENERATION_PATHS:  # forwarded whole: the backend's answer as is
        assert canon(json.loads(backend.body)) == canon(sent)
        assert client.answer == backend.answer
        return
    assert canon(json.loads(backend.body)) == canon(forwarded_body(sent)), \
        f"the backend got\n{backend.body.decode()}\nfor\n{client.body.decode()}"
    if not sent.get("stream"):
        answer = json.loads(client.answer)
        assert answer["model"] == model and answer["id"] and isinstance(answer["created"], int)
        assert canon(_whole(client.answer)) == canon(_whole(backend.answer))
        return
    got = sse_events(bytes(client.answer))
    assert all(e["model"] == model and e["id"] == got[0]["id"] for e in got[:-1])
    if client.path == "/v1/chat/completions":  # the gateway's own role events lead
        num_choices = sent.get("n") or 1
        assert all(_is_role_event(e) and _without_role(e) is None for e in got[:num_choices])
        assert [e["choices"][0]["index"] for e in got[:num_choices]] == list(range(num_choices))
        assert sum("role" in (c.get("delta") or {}) for e in got[:-1]
                   for c in e["choices"]) == num_choices  # and no other event has a role
    assert [canon(e) for e in normalized(got)] == [canon(e) for e in normalized(client_view(
        sse_events(bytes(backend.answer)), sent))]


def same_answers(direct: Exchange, routed: Exchange) -> None:
    """A client got the same answer through the gateway as from the backend directly."""
    if json.loads(direct.body).get("stream"):
        assert [canon(e) for e in normalized(sse_events(bytes(routed.answer)))] == \
            [canon(e) for e in normalized(sse_events(bytes(direct.answer)))]
    else:
        assert canon(_whole(routed.answer)) == canon(_whole(direct.answer))


@dataclass(slots=True)
class Rig:
    server: RecordingServer
    gateway_url: str

    def run(self, call: Callable[[str, Any], Any], script: Script | None = None
            ) -> tuple[Any, Any]:
        """`call(base_url, http_client)` straight at the backend, then through the gateway;
        every request checked as passed through both ways; the two results."""
        self.server.script = script or Script()
        results, sides = [], []
        for base_url in (f"{self.server.url}/v1", self.gateway_url):
            capture, first = CaptureTransport(), len(self.server.exchanges)
            with httpx.Client(transport=capture, timeout=10) as http:
                results.append(call(base_url, http))
            posts = [e for e in capture.exchanges if e.method == "POST"]
            sides.append((posts, self.server.exchanges[first:]))
        (direct, _), (routed, backend) = sides
        assert len(direct) == len(routed) == len(backend) > 0
        for d, r, b in zip(direct, routed, backend, strict=True):
            assert canon(json.loads(d.body)) == canon(json.loads(r.body))  # the same call
            assert_passed_through(r, b, self.server.model_name)
            same_answers(d, r)
        return results[0], results[1]
