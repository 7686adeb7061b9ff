"""Step-time probes through the API (shunter.bench.probe), against a fake server whose prefill
and token delays are known."""

from __future__ import annotations

import asyncio

import pytest
from tests.bench.fake import MODEL, fake_endpoint

from shunter.bench.client import EndpointConfig
from shunter.bench.probe import ProbePlan, decode_gap_s, kv_capacity_from_metrics, probe_endpoint
from shunter.core.types import FinishReason
from shunter.errors import ConfigError
from shunter.metrics.record import RequestRecord


def rec(times: list[float]) -> RequestRecord:
    return RequestRecord(request_id="r", arrival_s=0.0, num_prompt_tokens=4, token_times_s=times,
                         finish_s=times[-1], finish_reason=FinishReason.LENGTH)


def test_decode_gap_uses_the_window_where_every_stream_decodes() -> None:
    # stream a starts early (big gaps while alone), b joins at 1.0; together gaps are 0.1
    a = rec([0.0, 0.5, 1.0, 1.1, 1.2, 1.3])
    b = rec([1.0, 1.1, 1.2, 1.3, 1.4])
    assert decode_gap_s([a, b]) == pytest.approx(0.1)
    assert decode_gap_s([rec([0.0, 1.0, 1.2, 1.4]), rec([5.0, 5.3, 5.6])]) == pytest.approx(0.2)
    with pytest.raises(ConfigError):
        decode_gap_s([rec([1.0]), rec([1.0])])


def test_kv_capacity_from_vllm_metrics() -> None:
    text = ('# HELP vllm:cache_config_info x\n'
            'vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="2912"} 1.0\n')
    assert kv_capacity_from_metrics(text) == 2912 * 16
    assert kv_capacity_from_metrics("vllm:num_requests_running 0\n") is None


def test_probe_sees_the_servers_prefill_and_token_delays() -> None:
    plan = ProbePlan(prefill_tokens=(8, 32), decode_batch_sizes=(1, 3),
                     decode_context_tokens=(16,), num_decode_tokens=6, num_repeats=1)
    with fake_endpoint(first_token_delay_s=0.03, token_delay_s=0.02) as (url, _):
        samples = asyncio.run(probe_endpoint(EndpointConfig(url=url, model=MODEL), plan))
    prefills, decodes = samples[:2], samples[2:]
    assert [s.prefill_chunks for s, _ in prefills] == [((8, 0),), ((32, 0),)]
    assert all(0.03 <= t < 0.2 for _, t in prefills)
    assert [s.num_decode_requests for s, _ in decodes] == [1, 3]
    assert decodes[1][0].num_decode_context_tokens == 3 * (16 + 3)
    assert all(t == pytest.approx(0.02, abs=0.015) for _, t in decodes)


def test_a_failing_server_fails_the_probe() -> None:
    with fake_endpoint(fail_status=500) as (url, _), pytest.raises(ConfigError, match="failed"):
        asyncio.run(probe_endpoint(EndpointConfig(url=url, model=MODEL), ProbePlan()))


def test_bad_plans_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        ProbePlan(num_decode_tokens=2)
    with pytest.raises(ConfigError):
        ProbePlan(prefill_tokens=(0,))
