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
