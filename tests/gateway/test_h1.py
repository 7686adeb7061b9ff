"""The keep-alive HTTP/1.1 client non-streaming remote requests go through (`gateway/h1.py`)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from shunter.gateway.h1 import H1Client


class _Server:
    """A raw HTTP server that answers each request with `answer(request_bytes)` (or nothing)."""

    def __init__(self, answer):
        self.answer = answer
        self.num_connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.num_connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                reply = self.answer(self.requests[-1])
                if reply is None:  # hang until the client gives up
                    await reader.read()
                    return
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed.set()


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def _serve(answer):
    server = _Server(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    return server, listener, port


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_posts_reuse_one_connection_and_send_the_path_headers_and_body(run):
    async def main():
        server, listener, port = await _serve(lambda req: _ok(b'{"n": %d}' % len(req)))
        client = H1Client(f"http://127.0.0.1:{port}/base", headers={"authorization": "Bearer k"})
        answers = [await client.post("v1/completions", b'{"a": 1}') for _ in range(3)]
        client.close()
        listener.close()
        return server, answers

    server, answers = run(main())
    assert server.num_connections == 1 and len(answers) == 3
    assert all(status == 200 and body.startswith(b'{"n": ') for status, body in answers)
    head = server.requests[0]
    assert head.startswith(b"POST /base/v1/completions HTTP/1.1\r\n")
    assert b"authorization: Bearer k\r\n" in head and head.endswith(b'\r\n\r\n{"a": 1}')


def test_chunked_error_answer_and_connection_close_are_honoured():
    chunked = (b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n"
               b"connection: close\r\n\r\n3\r\nbad\r\n2\r\n!!\r\n0\r\n\r\n")

    async def main():
        server, listener, port = await _serve(lambda req: chunked)
        client = H1Client(f"http://127.0.0.1:{port}")
        answers = [await client.post("x", b"{}") for _ in range(2)]
        listener.close()
        return server, answers

    server, answers = asyncio.run(main())
    assert answers == [(400, b"bad!!")] * 2 and server.num_connections == 2


def test_an_idle_connection_the_server_dropped_is_replaced_without_an_error():
    async def main():
        server, listener, port = await _serve(lambda req: _ok(b"{}"))
        client = H1Client(f"http://127.0.0.1:{port}")
        await client.post("x", b"{}")
        conn = client._idle[0]
        conn.is_closed = False  # as if the close had not been seen yet
        conn._transport.close()  # noqa: SLF001 - simulate the server's idle timeout
        client._idle.append(conn)
        answer = await client.post("x", b"{}")
        listener.close()
        return server, answer

    server, answer = asyncio.run(main())
    assert answer == (200, b"{}") and server.num_connections == 2


def test_cancel_and_timeout_close_the_connection_so_the_backend_can_abort():
    async def main():
        server, listener, port = await _serve(lambda req: None)
        client = H1Client(f"http://127.0.0.1:{port}", read_timeout_s=0.05)
        with pytest.raises(TimeoutError):
            await client.post("x", b"{}")
        await asyncio.wait_for(server.closed.wait(), 1)
        server.closed.clear()
        client.read_timeout_s = 10.0
        task = asyncio.get_running_loop().create_task(client.post("x", b"{}"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed.wait(), 1)
        listener.close()
        return client

    client = asyncio.run(main())
    assert client._idle == []


def test_refuses_what_it_cannot_speak():
    with pytest.raises(ValueError, match="plain http"):
        H1Client("https://example.com")
    with pytest.raises(OSError):
        asyncio.run(H1Client("http://127.0.0.1:1").post("x", b"{}"))


def _sse(*events: bytes, end: bool = True) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + body + (
        b"0\r\n\r\n" if end else b"")


async def _read_all(stream) -> bytes:
    out = b""
    while data := await stream.read():
        out += data
    return out


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_streams_read_as_they_come_and_reuse_their_connection(run):
    async def main():
        server, listener, port = await _serve(lambda req: _sse(b"data: 1\n\n", b"data: 2\n\n"))
        client = H1Client(f"http://127.0.0.1:{port}")
        bodies = []
        for _ in range(3):
            stream = await client.stream("v1/completions", b"{}")
            assert stream.status == 200
            bodies.append(await _read_all(stream))
            stream.release()
        client.close()
        listener.close()
        return server, bodies

    server, bodies = run(main())
    assert bodies == [b"data: 1\n\ndata: 2\n\n"] * 3
    assert server.num_connections == 1


def test_a_stream_left_after_its_last_event_returns_to_the_pool_at_its_end():
    async def main():
        server, listener, port = await _serve(lambda req: _sse(b"data: [DONE]\n\n"))
        client = H1Client(f"http://127.0.0.1:{port}")
        for _ in range(3):
            stream = await client.stream("v1/completions", b"{}")
            assert (await stream.read()).startswith(b"data: [DONE]")
            stream.release_at_end()
            stream.release()  # (a second release changes nothing)
            await asyncio.sleep(0.05)
        client.close()
        listener.close()
        return server

    assert asyncio.run(main()).num_connections == 1


def test_a_stream_released_before_its_end_closes_its_connection():
    async def main():
        server, listener, port = await _serve(lambda req: _sse(b"data: 1\n\n", end=False))
        client = H1Client(f"http://127.0.0.1:{port}")
        stream = await client.stream("v1/completions", b"{}")
        assert await stream.read() == b"data: 1\n\n"
        stream.release()  # the backend's cue to abort
        await asyncio.wait_for(server.closed.wait(), 2)
        stream = await client.stream("v1/completions", b"{}")  # a fresh connection
        stream.release()
        client.close()
        listener.close()
        return server

    assert asyncio.run(main()).num_connections == 2


def test_a_stream_whose_backend_dies_or_stalls_raises():
    async def main():
        server, listener, port = await _serve(lambda req: None)  # head never comes
        client = H1Client(f"http://127.0.0.1:{port}", read_timeout_s=0.05)
        with pytest.raises(TimeoutError):
            await client.stream("v1/completions", b"{}")
        cut, listener2, port2 = await _serve(lambda req: _sse(b"data: 1\n\n", end=False)[:-3])
        client2 = H1Client(f"http://127.0.0.1:{port2}", read_timeout_s=0.2)
        stream = await client2.stream("v1/completions", b"{}")
        with pytest.raises((TimeoutError, ConnectionError)):
            await _read_all(stream)
        stream.release()
        for c, s in ((client, listener), (client2, listener2)):
            c.close()
            s.close()

    asyncio.run(main())
