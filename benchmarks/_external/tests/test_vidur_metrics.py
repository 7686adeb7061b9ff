from __future__ import annotations

import csv
from pathlib import Path

import pytest
from benchmarks._external.vidur_metrics import (
    ARRIVAL_SERIES_FILE,
    REQUEST_METRICS_FILE,
    read_vidur_requests,
    summarize,
)

_COLUMNS = ["Request Id", "request_e2e_time", "request_scheduling_delay", "prefill_e2e_time",
            "decode_time_execution_plus_preemption_normalized", "request_inter_arrival_delay",
            "request_num_prefill_tokens", "request_num_decode_tokens", "request_num_restarts"]


def _write_run(run_dir: Path, rows: list[dict[str, object]], arrivals: list[float]) -> Path:
    """A run directory shaped like Vidur's: request_metrics.csv (rows in any order, floats for
    ids as pandas' outer join writes them) and plots/request_arrival_time_series.csv."""
    (run_dir / "plots").mkdir(parents=True)
    with open(run_dir / REQUEST_METRICS_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in _COLUMNS})
    with open(run_dir / ARRIVAL_SERIES_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["", "Time (sec)", "request_arrival"])
        for index, arrival_s in enumerate(arrivals):
            writer.writerow([index, arrival_s, index + 1])
    return run_dir


def _three_requests(tmp_path: Path) -> Path:
    # id 0: arrives 1.0, first token 0.5 s later, 5 tokens done at E2E 2.5 -> TPOT 0.5
    # id 1: arrives 2.0, single output token -> no TPOT; waited 0.25 s in queue
    # id 2: arrives 4.0, never completed (empty latencies)
    rows = [
        {"Request Id": 2.0, "request_inter_arrival_delay": 2.0, "request_num_prefill_tokens": 30,
         "request_num_decode_tokens": 7, "request_num_restarts": ""},
        {"Request Id": 0.0, "request_e2e_time": 2.5, "request_scheduling_delay": 0.0,
         "prefill_e2e_time": 0.5, "request_num_prefill_tokens": 10,
         "request_num_decode_tokens": 5, "request_num_restarts": 1},
        {"Request Id": 1.0, "request_e2e_time": 0.75, "request_scheduling_delay": 0.25,
         "prefill_e2e_time": 0.75, "request_inter_arrival_delay": 1.0,
         "request_num_prefill_tokens": 20, "request_num_decode_tokens": 1,
         "request_num_restarts": 0},
    ]
    return _write_run(tmp_path / "run", rows, [1.0, 2.0, 4.0])


def test_read_joins_ids_with_arrivals_and_derives_tpot(tmp_path: Path) -> None:
    requests = read_vidur_requests(_three_requests(tmp_path))
    assert [(r.request_id, r.arrival_s, r.num_prompt_tokens, r.num_output_tokens)
            for r in requests] == [(0, 1.0, 10, 5), (1, 2.0, 20, 1), (2, 4.0, 30, 7)]
    assert requests[0].tpot_s == pytest.approx((2.5 - 0.5) / (5 - 1))
    assert requests[1].tpot_s is None  # one output token: TPOT undefined, as in vLLM's bench
    assert requests[2].e2e_s is None and requests[2].tpot_s is None
    assert requests[0].finish_s == pytest.approx(3.5)


def test_summarize_uses_completed_requests_and_makespan(tmp_path: Path) -> None:
    summary = summarize(read_vidur_requests(_three_requests(tmp_path)))
    assert summary["num_completed"] == 2
    assert summary["ttft_mean_s"] == pytest.approx((0.5 + 0.75) / 2)
    assert summary["tpot_p50_s"] == pytest.approx(0.5)
    assert summary["queue_p99_s"] == pytest.approx(0.0 + 0.99 * 0.25)
    # first arrival 1.0 (all requests), last finish max(1.0 + 2.5, 2.0 + 0.75) = 3.5
    assert summary["makespan_s"] == pytest.approx(2.5)
    assert summary["throughput_output_tokens_per_s"] == pytest.approx((5 + 1) / 2.5)
    assert summary["num_restarts"] == 1


def test_misaligned_arrivals_are_rejected(tmp_path: Path) -> None:
    rows = [{"Request Id": 0, "request_num_prefill_tokens": 1, "request_num_decode_tokens": 1},
            {"Request Id": 1, "request_inter_arrival_delay": 5.0,
             "request_num_prefill_tokens": 1, "request_num_decode_tokens": 1}]
    with pytest.raises(ValueError, match="disagree"):
        read_vidur_requests(_write_run(tmp_path / "run", rows, [1.0, 2.0]))


def test_row_count_mismatch_is_rejected(tmp_path: Path) -> None:
    rows = [{"Request Id": 0, "request_num_prefill_tokens": 1, "request_num_decode_tokens": 1}]
    with pytest.raises(ValueError, match="arrivals"):
        read_vidur_requests(_write_run(tmp_path / "run", rows, [1.0, 2.0]))
