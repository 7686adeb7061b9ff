"""Open-loop replay (shunter.bench.runner) and the series derived from its records."""

from __future__ import annotations

import numpy as np
import pytest
from tests.bench.fake import MODEL, fake_endpoint

from shunter.bench.client import EndpointConfig
from shunter.bench.runner import run_bench
from shunter.bench.timeline import queue_series, tenant_service_series
from shunter.core.types import FinishReason, RequestSpec
from shunter.errors import ConfigError
from shunter.metrics.record import RequestRecord
from shunter.metrics.summary import summarize


def specs(arrivals: list[float], **kwargs) -> list[RequestSpec]:
    return [RequestSpec(request_id=f"r{i}", arrival_s=t, num_prompt_tokens=8,
                        num_output_tokens=4, **kwargs) for i, t in enumerate(arrivals)]


def test_requests_are_sent_at_their_trace_times_not_when_others_finish() -> None:
    # each request takes ~0.2 s: a closed loop would send the third at ~0.4 s, open loop at 0.1
    with fake_endpoint(first_token_delay_s=0.2) as (url, _):
        run = run_bench(specs([10.0, 10.05, 10.1]), EndpointConfig(url=url, model=MODEL))
    sent = [r.arrival_s for r in run.records]
    assert sent == pytest.approx([0.0, 0.05, 0.1], abs=0.04)  # times relative to the first
    assert all(r.is_completed for r in run.records) and run.num_late == 0
    assert [r.request_id for r in run.records] == ["r0", "r1", "r2"]
    assert run.wall_s == pytest.approx(0.3, abs=0.15)


def test_max_concurrency_holds_requests_back() -> None:
    with fake_endpoint(first_token_delay_s=0.1) as (url, _):
        run = run_bench(specs([0.0] * 4), EndpointConfig(url=url, model=MODEL), max_concurrency=2)
    sent = sorted(r.arrival_s for r in run.records)
    assert sent[2] >= 0.09 and run.num_late == 2


def test_progress_reaches_the_total_and_summaries_use_the_metrics_module() -> None:
    seen: list[int] = []
    with fake_endpoint() as (url, _):
        run = run_bench(specs([0.0, 0.01, 0.02], tenant="t1"), EndpointConfig(url=url, model=MODEL),
                        on_progress=seen.append)
    assert sorted(seen) == [1, 2, 3]
    summary = summarize(run.records)
    assert summary.num_completed == 3 and summary.num_output_tokens == 12
    assert summary.tenants["t1"].service == 3 * (8 + 2 * 4)


def test_an_empty_workload_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        run_bench([], EndpointConfig(url="http://127.0.0.1:9/v1", model="m"))


def record(rid: str, arrival: float, tokens: list[float], finish: float | None,
           tenant: str = "a") -> RequestRecord:
    return RequestRecord(request_id=rid, arrival_s=arrival, num_prompt_tokens=10, tenant=tenant,
                         token_times_s=tokens, finish_s=finish,
                         finish_reason=FinishReason.LENGTH if tokens else FinishReason.REJECTED)


def test_queue_series_counts_waiting_and_decoding_requests() -> None:
    series = queue_series([record("x", 0.0, [1.0, 2.0], 2.0), record("y", 0.5, [], 0.6),
                           record("z", 1.5, [3.0], 3.0)])
    # events: 0 x arrives, .5 y arrives, .6 y rejected, 1 x first token, 1.5 z arrives,
    #         2 x finishes, 3 z first token, 3 z finishes
    assert series.times_s.tolist() == [0.0, 0.5, 0.6, 1.0, 1.5, 2.0, 3.0, 3.0]
    assert series.num_waiting.tolist() == [1, 2, 1, 0, 1, 1, 0, 0]
    assert series.num_decoding.tolist() == [0, 0, 0, 1, 1, 0, 1, 0]


def test_tenant_service_is_cumulative_vtc_service() -> None:
    series = tenant_service_series([record("x", 0.0, [1.0, 2.0], 2.0, "a"),
                                    record("y", 0.0, [1.5], 1.5, "b"), record("z", 0, [], 0.1)])
    times, service = series["a"]
    assert times.tolist() == [1.0, 1.0, 2.0] and service.tolist() == [10, 12, 14]
    assert np.asarray(series["b"][1]).tolist() == [10, 12]
