"""Hostile and broken clients against a real gateway on 127.0.0.1 (raw sockets): endless or too
many headers, a slowloris head, idle keep-alive, a stalled body, a stream nobody reads, a
descriptor budget near its limit; a 500 is logged, and a drain that runs out ends streams
with an error event. Every timeout is configured small and every wait is bounded."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import select
import socket
import time

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("aiohttp")

from tests.gateway.live import MODEL, live_gateway  # noqa: E402

from shunter.backend.protocol import GenerateRequest  # noqa: E402
from shunter.errors import ConfigError  # noqa: E402
from shunter.gateway import limits as limits_module  # noqa: E402
from shunter.gateway.admission import AdmissionConfig  # noqa: E402
from shunter.gateway.config import load_config  # noqa: E402
from shunter.gateway.fake import FakeEngineClient  # noqa: E402
from shunter.gateway.limits import LimitsConfig, count_open_fds, raise_fd_limit  # noqa: E402

SHORT_S = 0.5  # every configured timeout under test
SLACK_S = 1.5  # how late past it the close may come on a loaded 2-core CI machine


def _connect(port: int, *, rcvbuf_bytes: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf_bytes is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def _until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, float | None]:
    """What the gateway sends until it closes the connection, and how long that took (None:
    still open after `timeout_s`)."""
    start, data = time.monotonic(), b""
    while (left := start + timeout_s - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, time.monotonic() - start
        if not chunk:
            return data, time.monotonic() - start
        data += chunk
    return data, None


def _response(sock: socket.socket) -> bytes:
    """One whole response with a content-length, read off a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _post(path: str, body: dict, *, length: int | None = None) -> bytes:
    raw = json.dumps(body).encode()
    return (b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % (path.encode(), len(raw) if length is None
                                              else length)) + raw


@pytest.mark.parametrize("line, num_lines", [
    (b"x-pad: " + b"a" * 1000 + b"\r\n", 64 << 10),  # 64 MiB of headers, 1 KiB each
    (b"x-" + b"a" * (64 << 20) + b": v\r\n", 1),  # one 64 MiB header name
])
def test_endless_headers_get_431_and_a_close_before_they_are_all_read(line, num_lines):
    with live_gateway(1) as stack:
        sock = _connect(stack.port)
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        data = line * num_lines
        total, sent = len(data), 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            while sent < total:  # the gateway reads at most the limit and a read more
                sent += sock.send(data[sent:sent + (256 << 10)])
        answer, took_s = _until_closed(sock, 5)
        sock.close()
        assert sent < total // 4, f"the gateway read {sent} bytes of headers"
        assert took_s is not None
        assert answer.startswith(b"HTTP/1.1 431 ")


def test_too_many_headers_get_431():
    with live_gateway(1, limits=LimitsConfig(max_headers=32)) as stack:
        sock = _connect(stack.port)
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n" + b"x-h: v\r\n" * 40 + b"\r\n")
        answer, took_s = _until_closed(sock, 5)
        assert answer.startswith(b"HTTP/1.1 431 ") and took_s is not None
        sock = _connect(stack.port)  # at the limit: served
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n" + b"x-h: v\r\n" * 31 + b"\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 200 ")


def test_a_slowloris_head_is_cut_with_408_after_the_header_timeout():
    with live_gateway(1, limits=LimitsConfig(header_timeout_s=SHORT_S)) as stack:
        sock = _connect(stack.port)
        start, answer = time.monotonic(), b""
        for byte in b"GET /health HTTP/1.1\r\nx-slow: " + b"a" * 60:  # a byte per 0.1 s
            if select.select([sock], [], [], 0.1)[0]:
                answer, _ = _until_closed(sock, 1)
                break
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.send(bytes([byte]))
        took_s = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 408 "), f"still open after {took_s:.1f} s"
        assert SHORT_S - 0.1 < took_s < SHORT_S + SLACK_S
        silent = _connect(stack.port)  # says nothing at all: closed, nothing to answer
        answer, took_s = _until_closed(silent, SHORT_S + SLACK_S)
        assert answer == b"" and took_s is not None and took_s > SHORT_S - 0.1


def test_a_kept_alive_head_gets_its_own_header_time_after_an_idle_pause():
    with live_gateway(1, limits=LimitsConfig(header_timeout_s=SHORT_S)) as stack:
        sock = _connect(stack.port)
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(SHORT_S + 0.3)  # idle past the header timeout (not the idle timeout)
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # a head in two parts
        time.sleep(0.1)
        sock.sendall(b"host: x\r\n\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /health HTTP/1.1\r\nx-slow: a")  # then a slowloris: still cut
        answer, took_s = _until_closed(sock, SHORT_S + SLACK_S)
        assert answer.startswith(b"HTTP/1.1 408 ") and took_s is not None


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout():
    with live_gateway(1, limits=LimitsConfig(idle_timeout_s=SHORT_S)) as stack:
        sock = _connect(stack.port)
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 200 ")
        answer, took_s = _until_closed(sock, SHORT_S + SLACK_S)
        assert answer == b"" and took_s is not None and took_s > SHORT_S - 0.1


def test_a_stalled_body_gets_408():
    with live_gateway(1, limits=LimitsConfig(body_timeout_s=SHORT_S)) as stack:
        sock = _connect(stack.port)
        request = _post("/v1/completions", {"model": MODEL, "prompt": "x"}, length=1000)
        sock.sendall(request)  # 1000 bytes announced, a few sent: then nothing
        start = time.monotonic()
        answer, took_s = _until_closed(sock, SHORT_S + SLACK_S)
        assert answer.startswith(b"HTTP/1.1 408 "), f"answer {answer[:40]!r}"
        assert took_s is not None and time.monotonic() - start > SHORT_S - 0.1
        assert b"request_timeout" in answer
        deadline = time.monotonic() + 2
        while stack.app.num_in_progress and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stack.app.num_in_progress == 0


def _complete(port: int, max_tokens: int, timeout_s: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("POST", "/v1/completions", json.dumps(
            {"model": MODEL, "prompt": "hi", "max_tokens": max_tokens, "ignore_eos": True}),
            {"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_stream_nobody_reads_frees_its_slot_after_the_send_timeout():
    with live_gateway(1, max_concurrency=1, sndbuf_bytes=16 << 10,
                      limits=LimitsConfig(send_timeout_s=SHORT_S),
                      admission=AdmissionConfig(max_queue_wait_s=5.0)) as stack:
        hog = _connect(stack.port, rcvbuf_bytes=4096)  # asks for a long stream, reads nothing
        hog.sendall(_post("/v1/completions", {"model": MODEL, "prompt": "x", "stream": True,
                                              "max_tokens": 4000, "ignore_eos": True}))
        deadline = time.monotonic() + 5
        while not stack.app.num_in_progress and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stack.app.num_in_progress == 1  # the backend's one slot is the hog's
        start = time.monotonic()
        status, body = _complete(stack.port, 5, timeout_s=10)
        took_s = time.monotonic() - start
        assert status == 200, f"{status} after {took_s:.1f} s: {body[:120]!r}"
        assert took_s < 4.0
        answer, took_s = _until_closed(hog, 2)
        assert took_s is not None  # the hog's connection is gone
        hog.close()


@pytest.mark.parametrize("is_stream", [False, True])
def test_a_client_that_leaves_while_queued_is_removed_at_once(is_stream):
    with live_gateway(1, max_concurrency=1, backend_kwargs={"token_delay_s": 0.05},
                      admission=AdmissionConfig(max_queue_wait_s=30.0)) as stack:
        hog = _connect(stack.port)  # holds the backend's one slot for ~20 s
        hog.sendall(_post("/v1/completions", {"model": MODEL, "prompt": "x", "stream": True,
                                              "max_tokens": 400, "ignore_eos": True}))
        waiter = _connect(stack.port)
        waiter.sendall(_post("/v1/completions", {"model": MODEL, "prompt": "y",
                                                 "stream": is_stream, "max_tokens": 4}))
        deadline = time.monotonic() + 5
        while stack.app.admission.num_queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stack.app.admission.num_queued == 1
        waiter.close()  # gives up while queued
        start = time.monotonic()
        while stack.app.admission.num_queued and time.monotonic() - start < 5:
            time.sleep(0.01)
        assert stack.app.admission.num_queued == 0
        assert time.monotonic() - start < 0.5  # at once, not when a slot frees (~20 s)
        assert stack.app.num_in_progress == 1  # the hog's, untouched
        hog.close()


@pytest.mark.parametrize("is_stream", [False, True])
def test_a_500_is_logged_with_its_traceback(caplog, is_stream):
    class BrokenClient(FakeEngineClient):
        def submit(self, request: GenerateRequest):
            raise RuntimeError("a bug in the gateway's path")

    with caplog.at_level(logging.ERROR, logger="shunter.gateway"), \
            live_gateway(clients=[("broken", BrokenClient())]) as stack:
        sock = _connect(stack.port)
        sock.sendall(_post("/v1/completions", {"model": MODEL, "prompt": "x",
                                               "stream": is_stream}).replace(
            b"host: x\r\n", b"host: x\r\nconnection: close\r\n"))
        answer, _ = _until_closed(sock, 5)
        if not is_stream:
            assert answer.startswith(b"HTTP/1.1 500 ")
        records = [r for r in caplog.records if r.name == "shunter.gateway"
                   and r.levelno >= logging.ERROR and r.exc_info is not None]
        assert records, "no 500 was logged"
        assert "a bug in the gateway's path" in caplog.text
        assert "Traceback" in caplog.text


def test_a_drain_that_runs_out_ends_a_running_stream_with_an_error_event():
    with live_gateway(1, drain_timeout_s=SHORT_S,
                      backend_kwargs={"token_delay_s": 0.05}) as stack:
        conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
        conn.request("POST", "/v1/completions", json.dumps(
            {"model": MODEL, "prompt": "x", "max_tokens": 400, "stream": True,
             "ignore_eos": True}), {"content-type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        events = [response.readline()]
        stack.server.handle_exit(15, None)  # SIGTERM: a 20 s stream, a 0.5 s drain
        start = time.monotonic()
        events += response.read().split(b"\n\n")  # IncompleteRead if the stream is cut
        events = [e.strip() for e in events if e.strip()]
        assert time.monotonic() - start < SHORT_S + 3
        assert events[-1] == b"data: [DONE]"
        error = json.loads(events[-2].removeprefix(b"data: "))["error"]
        assert error["code"] == "drain_timeout"
        stack.task.result(10)  # the server stopped by itself


def test_new_connections_are_refused_near_the_descriptor_limit(caplog):
    with caplog.at_level(logging.INFO, logger="shunter.gateway"), live_gateway(1) as stack:
        num_open = count_open_fds()
        assert num_open is not None
        budget = stack.server.fds  # a limit 20 descriptors away: 10 client connections here

        def tighten() -> None:
            budget.max_fds = int((num_open + 20) / budget.refuse_fraction)
        stack.call(tighten)
        held, answers = [], []
        for _ in range(30):
            sock = _connect(stack.port)
            held.append(sock)
            if select.select([sock], [], [], 0.05)[0]:
                answers.append(_until_closed(sock, 2)[0])
        assert answers and all(a.startswith(b"HTTP/1.1 503 ") for a in answers)
        assert 5 <= len(held) - len(answers) <= 20  # those below the limit stay open
        assert "file descriptors near the limit" in caplog.text
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 3
        while "recovered" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "file descriptors recovered" in caplog.text
        assert _complete(stack.port, 2, timeout_s=5)[0] == 200


def test_raise_fd_limit_lifts_the_soft_limit_to_the_hard_one(monkeypatch, caplog):
    limits = {"now": (1024, 65536)}
    monkeypatch.setattr(limits_module.resource, "getrlimit", lambda _: limits["now"])
    monkeypatch.setattr(limits_module.resource, "setrlimit",
                        lambda _, value: limits.__setitem__("now", value))
    with caplog.at_level(logging.INFO, logger="shunter.gateway"):
        assert raise_fd_limit() == 65536
    assert limits["now"] == (65536, 65536)
    assert "raised from 1024 to 65536" in caplog.text


def test_limits_table_is_read_and_validated(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text("[limits]\nmax_header_bytes = 32768\nheader_timeout_s = 2\n"
                    "send_timeout_s = 0.5\n")
    config = load_config(path)
    assert config.limits == LimitsConfig(max_header_bytes=32768, header_timeout_s=2.0,
                                         send_timeout_s=0.5)
    assert load_config(tmp_path / "gateway.toml").limits.idle_timeout_s == 75.0
    for text, key in [("body_timeout_s = 0", "body_timeout_s"),
                      ("max_headers = 'many'", "max_headers"),
                      ("fd_warn_fraction = 0.95", "fd_warn_fraction"),
                      ("header_timeout = 3", "header_timeout")]:
        path.write_text(f"[limits]\n{text}\n")
        with pytest.raises(ConfigError, match=rf"gateway\.toml \[limits\].*{key}"):
            load_config(path)


def test_limits_default_safely():
    limits = LimitsConfig()
    assert (limits.max_header_bytes, limits.max_headers) == (64 << 10, 128)
    assert (limits.header_timeout_s, limits.idle_timeout_s, limits.body_timeout_s,
            limits.send_timeout_s) == (10.0, 75.0, 30.0, 30.0)
    assert limits.fd_warn_fraction == 0.8

