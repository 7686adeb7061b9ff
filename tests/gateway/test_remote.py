"""Remote backend plumbing: request bodies, replays, Prometheus load parsing, config files."""

import pytest

from shunter.backend.protocol import ChatMessage, GenerateRequest
from shunter.errors import ConfigError
from shunter.gateway.config import load_config
from shunter.gateway.remote import parse_load, request_payload

VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:num_preemptions_total{engine="0",model_name="m"} 4.0
vllm:request_success_total{finished_reason="stop",model_name="m"} 99.0
"""
LLAMACPP_METRICS = """llamacpp:requests_processing 2
llamacpp:requests_deferred 1
llamacpp:kv_cache_usage_ratio 0.5
"""


def test_parse_load_reads_vllm_and_llama_server_metrics():
    v = parse_load(VLLM_METRICS, 1.0)
    assert (v.num_running, v.num_waiting, v.kv_usage, v.num_preemptions) == (5, 7, 0.25, 4)
    lc = parse_load(LLAMACPP_METRICS, 1.0)
    assert (lc.num_running, lc.num_waiting, lc.kv_usage) == (2, 1, 0.5)
    assert parse_load("other_metric 1\n", 1.0) is None


def test_payload_asks_for_usage_and_replays_a_chat_as_a_continued_assistant_turn():
    request = GenerateRequest(request_id="r", model="m", max_tokens=10, stream=True,
                              messages=(ChatMessage("user", "hi"),), priority=0)
    body = request_payload(request, "backend-model", True)
    assert body["model"] == "backend-model" and "priority" not in body
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    replay = request_payload(request.replayed(" hello there", 2), None, True)
    assert replay["messages"][-1] == {"role": "assistant", "content": " hello there"}
    assert replay["continue_final_message"] is True and replay["add_generation_prompt"] is False
    assert replay["max_tokens"] == 8 and replay["model"] == "m"
    completion = GenerateRequest(request_id="r", model="m", prompt="p", priority=3, stream=False)
    body = request_payload(completion.replayed(" x", 1), None, False)
    assert body["prompt"] == "p x" and body["priority"] == 3 and "stream_options" not in body


def test_config_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text("""
[server]
port = 9000
models = ["m"]
[router]
name = "least_load"
[admission]
max_queued = 10
[[backends]]
name = "vllm"
url = "http://127.0.0.1:8001"
[[tenants]]
name = "acme"
api_keys = ["k"]
weight = 2
max_requests_per_min = 60
""")
    config = load_config(path)
    assert config.server.port == 9000 and config.router == "least_load"
    assert config.backends[0].url == "http://127.0.0.1:8001"
    assert config.tenants[0].api_keys == ("k",) and config.tenants[0].weight == 2
    path.write_text("[[backends]]\nname = 'x'\nkind = 'remote'\n")
    with pytest.raises(ConfigError, match="needs a url"):
        load_config(path)
    path.write_text("[server]\nport = 'eighty'\n")
    with pytest.raises(ConfigError, match="port"):
        load_config(path)
    path.write_text("[servr]\n")
    with pytest.raises(ConfigError, match="servr"):
        load_config(path)


def test_the_aiohttp_path_for_https_backends_reads_what_the_http1_client_reads():
    """https:// backends go through aiohttp (the lean HTTP/1.1 client speaks plain http): the
    same SSE parser (`backend_events.SseEvents`) must give the same chunks on both."""
    import asyncio

    from shunter.backend.protocol import GenerateRequest
    from shunter.gateway.fake_server import FakeHttpBackend
    from shunter.gateway.remote import RemoteConfig, RemoteEngineClient

    async def main() -> list[list[tuple[str, str | None]]]:
        backend = FakeHttpBackend(model_name="m")
        port = await backend.start()
        seen = []
        for use_h1 in (True, False):
            client = RemoteEngineClient(RemoteConfig(url=f"http://127.0.0.1:{port}"))
            if not use_h1:
                client._h1 = None  # as for an https:// URL
            for stream in (True, False):
                request = GenerateRequest(request_id="r", prompt="hello there", max_tokens=5,
                                          stream=stream, model="m")
                seen.append([(c.text, c.finish_reason) async for c in client.submit(request)])
            await client.close()
        await backend.stop()
        return seen

    h1_stream, h1_whole, aio_stream, aio_whole = asyncio.run(main())
    assert aio_stream == h1_stream and aio_whole == h1_whole
    assert len(h1_stream) > 1 and h1_stream[-1][1] == "length"


def test_metrics_on_a_connection_the_backend_drops_read_as_unknown_load_not_an_error():
    """A backend that drops the connection it is asked for /metrics on (aiohttp tries twice)
    raised aiohttp's ServerDisconnectedError out of `load`, past the pool's health check, and
    ended the loop of every later check (`test_failover.py`): the replica's health stood as
    the last round left it. Now that read is unknown load; the next, answered, gives the load
    (and that the backend is vLLM) again."""
    import asyncio

    from shunter.gateway.remote import RemoteConfig, RemoteEngineClient

    async def main() -> list[object]:
        num_asked = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal num_asked
            await reader.readuntil(b"\r\n\r\n")
            num_asked += 1
            if num_asked > 2:  # the first two are dropped unanswered (aiohttp tries twice)
                body = VLLM_METRICS.encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RemoteEngineClient(RemoteConfig(url=f"http://127.0.0.1:{port}",
                                                 metrics_path="/metrics"))
        try:
            return [await client.load(), client.is_vllm, await client.load(), client.is_vllm]
        finally:
            await client.close()
            server.close()

    dropped, was_vllm, answered, is_vllm = asyncio.run(main())
    assert dropped is None and not was_vllm
    assert answered.num_running == 5 and answered.num_waiting == 7 and is_vllm
