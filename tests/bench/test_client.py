"""One streamed request -> one RequestRecord (shunter.bench.client), and the prompts it sends."""

from __future__ import annotations

import asyncio
import time

import pytest
from tests.bench.fake import MODEL, fake_endpoint

from shunter.bench.client import EndpointConfig, _apply_event, api_root, request_body, send_request
from shunter.bench.prompt import PROMPT_WORDS, prompt_text
from shunter.bench.runner import new_session
from shunter.core.types import FinishReason, RequestSpec
from shunter.errors import ConfigError
from shunter.metrics.record import RequestRecord


def spec(request_id: str = "r0", num_prompt_tokens: int = 20, num_output_tokens: int = 5,
         **kwargs) -> RequestSpec:
    return RequestSpec(request_id=request_id, arrival_s=0.0, num_prompt_tokens=num_prompt_tokens,
                       num_output_tokens=num_output_tokens, **kwargs)


def send(url: str, s: RequestSpec, **config) -> RequestRecord:
    endpoint = EndpointConfig(url=url, model=MODEL, **config)

    async def go() -> RequestRecord:
        start = time.perf_counter()
        async with new_session(endpoint) as session:
            return await send_request(session, s, endpoint, lambda: time.perf_counter() - start)
    return asyncio.run(go())


def test_prompts_have_one_word_per_token_and_share_text_where_hash_ids_match() -> None:
    a = spec("a", 40, hash_ids=(7, 8), hash_block_size=16)
    b = spec("b", 40, hash_ids=(7, 9), hash_block_size=16)
    text_a, text_b = prompt_text(a), prompt_text(b)
    assert len(text_a.split()) == 40 and all(f" {w}" in PROMPT_WORDS for w in text_a.split())
    words_a, words_b = text_a.split(), text_b.split()
    assert words_a[:16] == words_b[:16] and words_a[16:32] != words_b[16:32]
    assert prompt_text(a) == text_a  # a pure function of the spec
    assert prompt_text(spec("c", 40)) != prompt_text(spec("d", 40))
    short = spec("e", 10, hash_ids=(7,), hash_block_size=16)  # a prompt shorter than a block
    assert prompt_text(short).split() == words_a[:10]


def test_request_body_carries_length_tenant_and_priority() -> None:
    config = EndpointConfig(url="http://h:1/v1", model="m", tenant_keys={"t": "k"}, api_key="x")
    body = request_body(spec(tenant="t", priority=2, num_output_tokens=7), config)
    assert body["max_tokens"] == 7 and body["ignore_eos"] and body["stream"]
    assert body["user"] == "t" and body["priority"] == 2
    assert "priority" not in request_body(spec(), config)  # vLLM rejects it unless configured
    assert config.headers(spec(tenant="t")) == {"authorization": "Bearer k"}
    assert config.headers(spec(tenant="other")) == {"authorization": "Bearer x"}
    assert config.headers(spec(tenant="t", session_id="s", program_id="p")) == {
        "authorization": "Bearer k", "x-session-id": "s", "x-program-id": "p"}
    assert api_root("http://h:1/v1/") == "http://h:1"
    with pytest.raises(ConfigError):
        api_root("h:1")


def test_a_streamed_request_records_each_token_and_the_usage() -> None:
    with fake_endpoint(token_delay_s=0.005) as (url, _):
        record = send(url, spec(num_output_tokens=5))
    assert record.is_completed and record.finish_reason is FinishReason.LENGTH
    assert record.num_output_tokens == 5
    assert record.num_prompt_tokens == 20  # the fake counts words: one per prompt word
    times = record.token_times_s
    assert record.arrival_s < times[0] and times == sorted(times) and times[-1] <= record.finish_s
    assert times[-1] - times[0] >= 4 * 0.004  # the 5 ms gaps are seen


def test_chat_endpoint_is_timed_too() -> None:
    with fake_endpoint() as (url, _):
        record = send(url, spec(num_output_tokens=3), is_chat=True)
    assert record.is_completed and record.num_output_tokens == 3


@pytest.mark.parametrize(("status", "reason"), [(503, FinishReason.REJECTED),
                                                (429, FinishReason.REJECTED),
                                                (500, FinishReason.ABORT)])
def test_http_errors_become_rejected_or_aborted_records(status, reason) -> None:
    with fake_endpoint(fail_status=status) as (url, _):
        record = send(url, spec())
    assert record.finish_reason is reason and f"HTTP {status}" in record.error
    assert record.num_output_tokens == 0 and record.finish_s is not None


def test_an_unreachable_server_is_an_aborted_record() -> None:
    with fake_endpoint() as (url, _):
        pass  # stopped: nothing listens there any more
    record = send(url, spec())
    assert record.finish_reason is FinishReason.ABORT and record.error


def test_continuous_usage_counts_tokens_per_chunk() -> None:
    record = RequestRecord(request_id="r", arrival_s=0.0, num_prompt_tokens=1)
    usage = {"prompt_tokens": 9, "completion_tokens": 1,
             "prompt_tokens_details": {"cached_tokens": 4}}
    _apply_event(record, {"choices": [{"text": "a"}], "usage": usage}, 1.0, False)
    _apply_event(record, {"choices": [{"text": "bc"}],
                          "usage": {**usage, "completion_tokens": 3}}, 2.0, False)
    finish = _apply_event(record, {"choices": [{"text": "", "finish_reason": "length"}],
                                   "usage": {**usage, "completion_tokens": 3}}, 3.0, False)
    assert record.token_times_s == [1.0, 2.0, 2.0] and finish == "length"
    assert record.num_prompt_tokens == 9 and record.num_cached_tokens == 4


def test_usage_at_the_end_fills_in_tokens_without_text() -> None:
    record = RequestRecord(request_id="r", arrival_s=0.0, num_prompt_tokens=1)
    _apply_event(record, {"choices": [{"delta": {"content": "x"}}]}, 1.0, True)
    _apply_event(record, {"choices": [{"delta": {"content": "y"}, "finish_reason": "stop"}]},
                 2.0, True)
    _apply_event(record, {"choices": [], "usage": {"prompt_tokens": 5,
                                                   "completion_tokens": 3}}, 2.5, True)
    assert record.token_times_s == [1.0, 2.0, 2.5]
    with pytest.raises(ValueError, match="mid-stream"):
        _apply_event(record, {"error": {"message": "boom"}}, 3.0, True)
