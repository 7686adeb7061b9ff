"""A recording fake OpenAI-compatible server on 127.0.0.1: every request body kept byte for byte
(`exchanges`, POSTs in order), every answer scripted (`script`, see `scripted_answer.py`) and
kept byte for byte as sent.

It answers POST /v1/chat/completions and /v1/completions (streamed or whole; or the script's
`error`, as a 4xx), /v1/embeddings, /tokenize and /detokenize; GET /v1/models, /health and
/metrics (not recorded). `recording_server()` runs one on its own loop and thread; `client()`
is a RemoteEngineClient pointed at it, for `live_gateway(clients=[("rec", server.client())])`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from tests.gateway.scripted_answer import (
    CREATED,
    Script,
    ScriptedAnswer,
    ScriptedChoice,
    Token,
    ToolCall,
    text_choice,
)

from shunter.gateway.remote import RemoteConfig, RemoteEngineClient

__all__ = ["Exchange", "RecordingServer", "Script", "ScriptedChoice", "Token", "ToolCall",
           "recording_server", "text_choice"]

_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(slots=True)
class Exchange:
    """One request and the answer, as bytes on the wire."""

    method: str
    path: str
    body: bytes
    answer: bytearray = field(default_factory=bytearray)
    status: int = 200

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(slots=True, eq=False)
class RecordingServer:
    model_name: str = "fake-model"
    script: Script = field(default_factory=Script)
    exchanges: list[Exchange] = field(default_factory=list)  # POSTs, in order
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> RemoteEngineClient:
        return RemoteEngineClient(RemoteConfig(url=self.url))

    async def start(self) -> int:
        app = web.Application(client_max_size=16 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return self._get(request.path)
        exchange = Exchange(request.method, request.path, await request.read())
        self.exchanges.append(exchange)
        body = exchange.json
        if request.path in ("/v1/chat/completions", "/v1/completions") and self.script.error:
            exchange.status = self.script.error_status
            out: Any = {"error": self.script.error}
        elif request.path in ("/v1/chat/completions", "/v1/completions"):
            answer = ScriptedAnswer(self.script, body, request.path == "/v1/chat/completions")
            if body.get("stream"):
                return await self._stream(request, exchange, answer.events())
            out = answer.whole()
        elif request.path == "/v1/embeddings":
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            out = {"object": "list", "model": body["model"], "data": [
                {"object": "embedding", "index": i, "embedding": [0.25, -0.5, i / 4]}
                for i in range(len(inputs))], "usage": {"prompt_tokens": 4, "total_tokens": 4}}
        elif request.path == "/tokenize":
            out = {"count": 3, "max_model_len": 2048, "tokens": [101, 102, 103],
                   "token_strs": None}
        elif request.path == "/detokenize":
            out = {"prompt": "".join(f"<{t}>" for t in body["tokens"])}
        else:
            exchange.status = 404
            out = {"error": {"message": f"no route {request.path}", "type": "NotFoundError",
                             "code": 404}}
        exchange.answer += _DUMPS(out).encode()
        return web.Response(body=bytes(exchange.answer), status=exchange.status,
                            content_type="application/json")

    def _get(self, path: str) -> web.Response:
        if path == "/v1/models":
            return web.json_response({"object": "list", "data": [
                {"id": self.model_name, "object": "model", "created": CREATED,
                 "owned_by": "recording", "max_model_len": 2048}]})
        if path == "/metrics":
            return web.Response(text=f'vllm:num_requests_running{{model_name="{self.model_name}"}}'
                                     ' 0.0\n')
        return web.Response(status=200 if path == "/health" else 404)

    async def _stream(self, request: web.Request, exchange: Exchange,
                      events: list[dict[str, Any]]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for data in [_DUMPS(e).encode() for e in events] + [b"[DONE]"]:
            line = b"data: " + data + b"\n\n"
            exchange.answer += line
            await response.write(line)
        await response.write_eof()
        return response


@contextlib.contextmanager
def recording_server(**kwargs: Any) -> Iterator[RecordingServer]:
    """A RecordingServer on 127.0.0.1 (a random port), on its own loop and thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="recording-server", daemon=True)
    thread.start()
    server = RecordingServer(**kwargs)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        yield server
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
