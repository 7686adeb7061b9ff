from __future__ import annotations

import json
import math
from array import array

import pytest

from shunter.core.types import FinishReason
from shunter.errors import ConfigError
from shunter.metrics import LatencyStats, RejectionGroup, summarize

REQUIRED_KEYS = {
    "num_requests", "num_completed", "num_rejected", "duration_s", "throughput_tok_s",
    "throughput_req_s", "ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_s", "slo_attainment",
    "goodput_req_s", "num_preemptions", "prefix_hit_rate", "fairness", "tenants",
    "num_aborted", "rejections",
}


def assert_stats(stats: LatencyStats, mean: float, p50: float, p90: float, p99: float) -> None:
    assert stats.to_dict() == pytest.approx({"mean": mean, "p50": p50, "p90": p90, "p99": p99})


def test_latencies_over_completed_requests_match_hand_computation(hand_records):
    s = summarize(hand_records)
    assert_stats(s.ttft_s, 0.4, 0.5, 0.5, 0.5)  # [0.5, 0.5, 0.2]
    assert_stats(s.e2e_s, 2.6 / 3, 1.0, 1.32, 1.392)  # [1.4, 1.0, 0.2]
    assert_stats(s.tpot_s, 0.4, 0.4, 0.48, 0.498)  # [0.3, 0.5]; r3 has one token
    assert_stats(s.itl_s, 0.35, 0.35, 0.47, 0.497)  # [.2 .3 .4 .5]; aborted r5's gap excluded
    assert_stats(s.queue_s, 0.1, 0.1, 0.18, 0.198)  # [0.2, 0.1, 0.0]


def test_tpot_agrees_with_record_property(hand_records):
    done = [r for r in hand_records if r.is_completed and r.tpot_s is not None]
    assert summarize(hand_records).tpot_s.mean == pytest.approx(
        sum(r.tpot_s for r in done) / len(done))


def test_counts_throughput_and_prefix_hits(hand_records):
    s = summarize(hand_records)
    assert (s.num_requests, s.num_completed, s.num_rejected, s.num_aborted) == (5, 3, 1, 1)
    assert s.num_unfinished == 0
    # only rejected requests, by their error
    assert s.rejections == {"queue full": RejectionGroup(1, 30, 30)}
    assert s.duration_s == pytest.approx(3.0)  # last end (aborted r5 at 3.0) - first arrival
    assert s.num_output_tokens == 7
    assert s.throughput_tok_s == pytest.approx(7 / 3)
    assert s.throughput_req_s == pytest.approx(1.0)
    assert s.throughput_input_tok_s == pytest.approx(170 / 3)
    assert s.num_preemptions == 3
    assert s.prefix_hit_rate == pytest.approx(60 / 170)


def test_duration_override_scales_rates(hand_records):
    s = summarize(hand_records, duration_s=7.0)
    assert s.duration_s == 7.0
    assert s.throughput_tok_s == pytest.approx(1.0)


def test_slo_attainment_uses_record_slo_then_run_default(hand_records):
    # run-wide 0.4/0.4: r1 misses TTFT (0.5); r2 keeps its own 0.6/0.6 and attains; r3 attains
    # (TTFT 0.2, no TPOT); rejected r4 and aborted r5 never attain.
    s = summarize(hand_records, ttft_slo_s=0.4, tpot_slo_s=0.4)
    assert s.slo_attainment == pytest.approx(2 / 5)
    assert s.goodput_req_s == pytest.approx(2 / 3)


def test_slo_attainment_without_run_default(hand_records):
    # r2 attains its own SLO; r1 and r3 have none and count as attained because completed.
    s = summarize(hand_records)
    assert s.slo_attainment == pytest.approx(3 / 5)
    assert s.goodput_req_s == pytest.approx(1.0)


def test_tpot_slo_miss(make_record):
    r = make_record("x", 0.0, 8, [0.1, 1.1, 2.1], 2.1, FinishReason.STOP, tpot_slo_s=0.5)
    assert summarize([r]).slo_attainment == 0.0
    assert summarize([r], tpot_slo_s=0.1).slo_attainment == 0.0  # record's own SLO wins
    assert summarize([r], tpot_slo_s=2.0).slo_attainment == 0.0


def test_tenants(hand_records):
    tenants = summarize(hand_records).tenants
    assert list(tenants) == ["A", "B"]
    assert tenants["A"].num_requests == 3
    assert tenants["A"].service == (100 + 4 * 2) + (20 + 2) + (10 + 2 * 2)  # aborted r5 served
    assert tenants["B"].service == 50 + 2 * 2  # rejected r4 got nothing
    assert tenants["A"].ttft_s.mean == pytest.approx(0.35)
    assert tenants["B"].e2e_s.p99 == pytest.approx(1.0)


def test_workload_without_tenants_has_default_tenant(make_record):
    r = make_record("x", 0.0, 8, [0.5], 0.5, FinishReason.STOP)
    assert list(summarize([r]).tenants) == ["default"]


def test_empty_run_is_json_safe():
    d = summarize([]).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["ttft_s"] == {"mean": None, "p50": None, "p90": None, "p99": None}
    assert d["throughput_tok_s"] is None and d["num_requests"] == 0


def test_awkward_records_never_produce_nan(make_record):
    odd = [
        make_record("u", 0.0, 4, [0.3], None, None),  # unfinished
        make_record("z", 0.0, 4, [], 0.0, FinishReason.REJECTED),  # rejected at once, no error text
        make_record("one", 1.0, 4, [1.0], 1.0, FinishReason.STOP),  # zero-length everything
    ]
    d = summarize(odd).to_dict()
    text = json.dumps(d, allow_nan=False)
    assert "NaN" not in text and "Infinity" not in text
    assert d["rejections"] == {"unspecified": {"num_requests": 1, "min_prompt_tokens": 4,
                                               "max_prompt_tokens": 4}}
    assert d["num_unfinished"] == 1
    assert d["tpot_s"]["mean"] is None and d["queue_s"]["mean"] is None


def test_array_backed_token_times_give_the_same_summary(hand_records, make_record):
    as_arrays = [make_record(r.request_id, r.arrival_s, r.num_prompt_tokens, [], r.finish_s,
                        r.finish_reason, tenant=r.tenant, first_scheduled_s=r.first_scheduled_s,
                        num_cached_tokens=r.num_cached_tokens, error=r.error)
                 for r in hand_records]
    for src, dst in zip(hand_records, as_arrays, strict=True):
        dst.token_times_s = array("d", src.token_times_s)
    assert summarize(as_arrays).itl_s == summarize(hand_records).itl_s


def test_to_dict_has_required_keys_and_is_plain(hand_records):
    d = summarize(hand_records).to_dict()
    assert d.keys() >= REQUIRED_KEYS
    assert set(d["fairness"]) == {"max_service_gap", "jain_index"}
    assert set(d["tenants"]["A"]) == {"num_requests", "service", "ttft_s", "e2e_s"}
    assert json.loads(json.dumps(d, allow_nan=False)) == d


@pytest.mark.parametrize("kwargs", [{"duration_s": -1.0}, {"ttft_slo_s": 0.0},
                                    {"tpot_slo_s": -2.0}, {"duration_s": math.inf},
                                    {"tenant_weights": {"A": 0.0}}])
def test_bad_arguments_raise_config_error(hand_records, kwargs):
    with pytest.raises(ConfigError):
        summarize(hand_records, **kwargs)


def test_rejections_group_by_reason_with_a_count_and_the_range_of_prompts(make_record):
    # one entry per reason, not per prompt length (Vidur's scenario: 2,108 rejections, ~150 keys)
    too_long = "prompt leaves no room for output within max_model_len=4096"
    records = [make_record(f"r{n}", 0.0, n, [], 0.0, FinishReason.REJECTED, error=too_long)
               for n in (5000, 4096, 31000)]
    records.append(make_record("q", 0.0, 7, [], 0.0, FinishReason.REJECTED, error="queue full"))
    assert summarize(records).to_dict()["rejections"] == {
        "prompt leaves no room for output within max_model_len=4096":
            {"num_requests": 3, "min_prompt_tokens": 4096, "max_prompt_tokens": 31000},
        "queue full": {"num_requests": 1, "min_prompt_tokens": 7, "max_prompt_tokens": 7}}


def test_without_any_slo_attainment_and_goodput_are_none_not_zero(make_record):
    records = [make_record("a", 0.0, 4, [0.5, 0.6], 0.6, FinishReason.STOP),
               make_record("b", 0.0, 4, [], 0.1, FinishReason.REJECTED)]
    s = summarize(records)
    assert s.slo_attainment is None and s.goodput_req_s is None  # nothing was asked
    assert summarize(records, ttft_slo_s=1.0).slo_attainment == pytest.approx(0.5)
