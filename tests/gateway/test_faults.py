"""Backends that misbehave (issue 16): wrong-shaped events, a death after the last token, stalls,
their own 429s; the gateway fails over exactly, or says so, never cuts silently."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from tests.gateway.live import MODEL, live_gateway

from shunter.backend.protocol import GenerateRequest
from shunter.gateway.fake import FakeModel

NUM_REQUESTS = 10


def expected_text(prompt: str, max_tokens: int) -> str:
    request = GenerateRequest(request_id="x", model=MODEL, prompt=prompt, max_tokens=max_tokens,
                              ignore_eos=True)
    return "".join(FakeModel().generate(request)[0])


def stream(url: str, prompt: str, max_tokens: int, timeout_s: float = 20.0) -> dict:
    """One streamed completion: its text, finish reasons, usage, error events."""
    out = {"text": "", "finish": [], "usage": None, "errors": [], "status": None}
    with httpx.stream("POST", f"{url}/completions", timeout=timeout_s, json={
            "model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}) as r:
        out["status"] = r.status_code
        if r.status_code != 200:
            out["errors"].append(r.read().decode())
            return out
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                out["errors"].append(event["error"])
                continue
            for choice in event.get("choices") or ():
                out["text"] += choice.get("text") or ""
                if choice.get("finish_reason"):
                    out["finish"].append(choice["finish_reason"])
            if event.get("usage") and not event.get("choices"):
                out["usage"] = event["usage"]
    return out


def test_a_wrong_shaped_event_fails_over_instead_of_cutting_the_stream():
    with live_gateway(2) as stack:
        stack.backends[0].bad_event_after_tokens = 3
        results = [stream(stack.base_url, f"prompt {i} about things", 8)
                   for i in range(NUM_REQUESTS)]
        assert all(r["errors"] == [] for r in results), results
        assert all(r["text"] == expected_text(f"prompt {i} about things", 8)
                   for i, r in enumerate(results))
        assert stack.app.metrics.failovers.get(("mid_stream",)) >= NUM_REQUESTS // 2 - 1
        stack.backends[1].bad_event_after_tokens = 3  # now nothing can finish it: say so
        broken = stream(stack.base_url, "a last prompt", 8)
        assert broken["errors"] and broken["errors"][0]["message"]


def test_a_backend_dying_after_its_last_token_gives_no_extra_token():
    with live_gateway(2) as stack:
        for backend in stack.backends:
            backend.cut_after_final_token = True
        results = [stream(stack.base_url, f"prompt {i}", 30) for i in range(NUM_REQUESTS)]
        for i, r in enumerate(results):
            assert r["errors"] == [] and r["finish"] == ["length"], r
            assert r["text"] == expected_text(f"prompt {i}", 30)
            assert r["usage"]["completion_tokens"] == 30


@pytest.mark.slow
def test_a_stalled_or_silent_backend_is_left_for_another():
    with live_gateway(2) as stack:
        stack.app.pool.config = type(stack.app.pool.config)(
            ttft_timeout_s=0.5, stall_timeout_s=0.5, health_interval_s=0.2)
        stack.backends[0].stall_after_tokens = 2
        start = time.monotonic()
        results = [stream(stack.base_url, f"stalled {i}", 6) for i in range(4)]
        assert all(r["errors"] == [] and r["text"] == expected_text(f"stalled {i}", 6)
                   for i, r in enumerate(results)), results
        stack.backends[0].stall_after_tokens = None
        stack.backends[0].first_token_delay_s = 30.0  # never answers in time
        results = [stream(stack.base_url, f"silent {i}", 6) for i in range(4)]
        assert all(r["errors"] == [] and r["text"] == expected_text(f"silent {i}", 6)
                   for i, r in enumerate(results)), results
        assert time.monotonic() - start < 15


def test_a_backends_own_429_is_retried_on_another_replica():
    with live_gateway(2) as stack:
        stack.backends[0].fail_status = 429
        results = [stream(stack.base_url, f"busy {i}", 4) for i in range(6)]
        assert all(r["status"] == 200 and r["errors"] == [] for r in results), results
        for backend in stack.backends:
            backend.fail_status = 503
        refused = stream(stack.base_url, "nobody", 4)
        assert refused["status"] in (429, 503) or refused["errors"]


def chat_stream(url: str, content: str, max_tokens: int, **extra) -> dict:
    out = {"text": "", "finish": [], "events": [], "errors": []}
    with httpx.stream("POST", f"{url}/chat/completions", timeout=20.0, json={
            "model": MODEL, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": True, **extra}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            out["events"].append(event)
            if "error" in event:
                out["errors"].append(event["error"])
            for choice in event.get("choices") or ():
                out["text"] += (choice.get("delta") or {}).get("content") or ""
                if choice.get("finish_reason"):
                    out["finish"].append(choice["finish_reason"])
    return out


def expected_chat(content: str, max_tokens: int) -> str:
    from shunter.backend.protocol import ChatMessage
    request = GenerateRequest(request_id="x", model=MODEL, max_tokens=max_tokens,
                              messages=(ChatMessage("user", content),), ignore_eos=True)
    return "".join(FakeModel().generate(request)[0])


def test_failover_resumes_by_token_ids_where_the_backend_reports_and_takes_them():
    """Issue 16, finding 3: replay was by text, which a real tokenizer can split differently.
    Against vLLM-like servers (token ids in the stream, token-id prompts taken) the next
    backend continues the very token sequence; the client's stream is unbroken and exact."""
    with live_gateway(3) as stack:
        stack.call(stack.app.pool.check_once)  # reads /metrics: these are vLLM-like
        for backend in stack.backends:
            backend.bodies = []
        stack.backends[0].abort_after_tokens = 3
        stack.backends[1].abort_after_tokens = 4  # some die twice: a resume of a resume
        completions = [stream(stack.base_url, f"prompt {i} of a story", 12) for i in range(4)]
        chats = [chat_stream(stack.base_url, f"tell me {i}", 12) for i in range(4)]
        for i, r in enumerate(completions):
            assert r["errors"] == [] and r["finish"] == ["length"], r
            assert r["text"] == expected_text(f"prompt {i} of a story", 12)
            assert r["usage"]["completion_tokens"] == 12
        for i, r in enumerate(chats):
            assert r["errors"] == [] and r["finish"] == ["length"], r
            assert r["text"] == expected_chat(f"tell me {i}", 12)
            assert all("token_ids" not in c and "prompt_token_ids" not in e
                       for e in r["events"] for c in e.get("choices") or ())
        bodies = [b for backend in stack.backends for b in backend.bodies]
        resumed = [b for b in bodies if isinstance(b.get("prompt"), list)]
        assert len(resumed) >= 5 and all(b["return_token_ids"] for b in bodies)
        assert not any("continue_final_message" in b for b in bodies)  # no text replay


def test_text_replay_remains_for_backends_without_token_ids():
    with live_gateway(2) as stack:
        for backend in stack.backends:
            backend.bodies = []
        for slot in stack.app.pool.replicas:
            slot.client.config = type(slot.client.config)(url=slot.client.config.url,
                                                          resume="text")
        stack.backends[0].abort_after_tokens = 3
        results = [chat_stream(stack.base_url, f"tell me {i}", 8) for i in range(2)]
        assert all(r["text"] == expected_chat(f"tell me {i}", 8) for i, r in enumerate(results))
        bodies = stack.backends[0].bodies + stack.backends[1].bodies
        assert not any("return_token_ids" in b for b in bodies)
        assert any(b.get("continue_final_message") for b in bodies)


def test_a_client_asking_for_token_ids_gets_them_through_a_failover():
    with live_gateway(2) as stack:
        stack.call(stack.app.pool.check_once)
        stack.backends[0].abort_after_tokens = 2
        r = chat_stream(stack.base_url, "ids please", 6, return_token_ids=True)
        ids = [i for e in r["events"] for c in e.get("choices") or () for i in
               c.get("token_ids") or ()]
        assert r["text"] == expected_chat("ids please", 6) and len(ids) >= 2
