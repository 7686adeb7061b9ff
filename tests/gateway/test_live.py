"""The gateway on a real socket, driven by the official `openai` client; backends die mid-stream,
clients leave, the server drains. Each test is bounded (client timeouts, stack start/stop)."""

import threading
import time

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("aiohttp")

from tests.gateway.live import MODEL, live_gateway  # noqa: E402

from shunter.backend.protocol import ChatMessage, GenerateRequest  # noqa: E402
from shunter.gateway.fake import FakeModel  # noqa: E402


def client(stack) -> "openai.OpenAI":
    return openai.OpenAI(base_url=stack.base_url, api_key="unused", timeout=10, max_retries=0)


def expected(max_tokens, *, prompt=None, messages=None):
    request = GenerateRequest(request_id="x", model=MODEL, prompt=prompt, messages=messages,
                              max_tokens=max_tokens, ignore_eos=True)
    return "".join(FakeModel().generate(request)[0])


def test_openai_client_chat_and_streamed_completion_through_remote_backends():
    with live_gateway() as stack:
        c = client(stack)
        chat = c.chat.completions.create(model=MODEL, max_tokens=5,
                                         messages=[{"role": "user", "content": "hello"}],
                                         extra_body={"ignore_eos": True})
        assert chat.choices[0].message.content == expected(
            5, messages=(ChatMessage("user", "hello"),))
        assert chat.usage.completion_tokens == 5
        chunks = list(c.completions.create(model=MODEL, prompt="tell me", max_tokens=7,
                                           stream=True, stream_options={"include_usage": True},
                                           extra_body={"ignore_eos": True}))
        assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == \
            expected(7, prompt="tell me")
        assert chunks[-1].usage.completion_tokens == 7 and chunks[-1].usage.prompt_tokens == 2
        assert [m.id for m in c.models.list()] == [MODEL]
        with pytest.raises(openai.NotFoundError):
            c.completions.create(model="nope", prompt="x")
        with pytest.raises(openai.BadRequestError):
            c.completions.create(model=MODEL, prompt="x", max_tokens=-1)


def test_backend_killed_mid_stream_the_client_stream_is_complete_and_correct():
    with live_gateway(backend_kwargs={"token_delay_s": 0.01}) as stack:
        c = client(stack)
        stream = c.chat.completions.create(
            model=MODEL, max_tokens=40, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "a long story"}],
            extra_body={"ignore_eos": True})
        texts, usage = [], None
        for i, chunk in enumerate(stream):
            if i == 5:  # round robin sent it to r0: kill it like a crashed process
                assert stack.backends[0].num_running == 1
                stack.call(stack.backends[0].kill)
            if chunk.choices:
                texts.append(chunk.choices[0].delta.content or "")
            usage = chunk.usage or usage
        assert "".join(texts) == expected(40, messages=(ChatMessage("user", "a long story"),))
        assert usage.completion_tokens == 40
        assert stack.app.metrics.failovers.get(("mid_stream",)) == 1
        assert stack.backends[1].num_requests == 1


def test_dead_backend_before_first_byte_is_retried_and_then_breaker_skips_it():
    with live_gateway() as stack:
        stack.call(stack.backends[0].kill)
        c = client(stack)
        for i in range(4):
            r = c.completions.create(model=MODEL, prompt=f"p{i}", max_tokens=3)
            assert r.choices[0].text == expected(3, prompt=f"p{i}")[: len(r.choices[0].text)]
        assert stack.backends[1].num_requests == 4


def test_client_disconnect_cancels_the_backend_stream():
    with live_gateway(backend_kwargs={"token_delay_s": 0.05}) as stack:
        c = client(stack)
        with c.completions.with_streaming_response.create(
                model=MODEL, prompt="x", max_tokens=200, stream=True,
                extra_body={"ignore_eos": True}) as response:
            lines = response.iter_lines()
            got = [line for _, line in zip(range(6), lines, strict=False)]
            assert any(line.startswith("data: ") for line in got)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and stack.backends[0].num_running:
            time.sleep(0.05)
        assert stack.backends[0].num_running == 0
        assert stack.backends[0].num_disconnects == 1
        assert stack.app.num_in_progress == 0


def test_graceful_drain_finishes_streams_in_progress():
    with live_gateway(backend_kwargs={"token_delay_s": 0.02}) as stack:
        c = client(stack)
        result = {}

        def consume():
            stream = c.completions.create(model=MODEL, prompt="drain", max_tokens=30,
                                          stream=True, extra_body={"ignore_eos": True})
            result["text"] = "".join(ch.choices[0].text for ch in stream if ch.choices)

        reader = threading.Thread(target=consume)
        reader.start()
        deadline = time.monotonic() + 5
        while not stack.app.num_in_progress and time.monotonic() < deadline:
            time.sleep(0.01)
        stack.server.handle_exit(15, None)  # SIGTERM
        assert stack.app.is_draining
        reader.join(10)
        assert result["text"] == expected(30, prompt="drain")
        stack.task.result(10)  # the server stopped by itself
