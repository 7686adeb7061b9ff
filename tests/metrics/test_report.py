from __future__ import annotations

import csv
import importlib.util
import json

import pytest
from rich.console import Console

from shunter.core.types import FinishReason
from shunter.errors import ConfigError
from shunter.metrics import summarize
from shunter.metrics.report import (
    BEST_STYLE,
    flatten,
    metric_direction,
    plot_cdf,
    render_comparison,
    render_table,
    write_csv,
    write_json,
)


def rendered(table) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def test_flatten_nested_keys():
    assert flatten({"a": 1, "ttft_s": {"p99": 2.0, "x": {"y": None}}}) == {
        "a": 1, "ttft_s.p99": 2.0, "ttft_s.x.y": None}


def test_write_json_is_valid_sorted_and_refuses_nan(tmp_path, hand_records):
    summary = summarize(hand_records).to_dict()
    path = write_json({"policy": "fcfs", **summary}, tmp_path / "a/s.json")
    text = path.read_text()
    data = json.loads(text)
    assert data["policy"] == "fcfs" and list(data) == sorted(data)
    write_json(summarize([]), tmp_path / "empty.json")  # objects with to_dict() are accepted
    assert json.loads((tmp_path / "empty.json").read_text())["ttft_s"]["p50"] is None
    with pytest.raises(ValueError):
        write_json({"x": float("nan")}, tmp_path / "bad.json")


def test_write_csv_flattens_and_aligns_columns(tmp_path, hand_records):
    summary = summarize(hand_records).to_dict()
    rows = [{"policy": "fcfs", **summary}, {"policy": "sjf", "ttft_s": {"p99": 1.5}}]
    path = write_csv(rows, tmp_path / "out.csv")
    with path.open() as f:
        got = list(csv.DictReader(f))
    assert got[0]["policy"] == "fcfs"
    assert float(got[0]["ttft_s.p99"]) == pytest.approx(summary["ttft_s"]["p99"])
    assert got[0]["tenants.A.service"] == "144"
    assert got[0]["fairness.max_service_gap"] == "104.0"
    assert got[1]["ttft_s.p99"] == "1.5" and got[1]["num_requests"] == ""
    assert path.read_bytes() == write_csv(rows, tmp_path / "again.csv").read_bytes()


def test_render_table_lists_metrics_and_tenants(hand_records):
    text = rendered(render_table(summarize(hand_records), "fcfs"))
    assert "fcfs" in text and "ttft_s.p99" in text and "fairness.jain_index" in text
    assert "tenant A: service" in text and "144" in text


def test_render_comparison_highlights_best_per_row(make_record, hand_records):
    fast = summarize(hand_records)
    slow = summarize([make_record("x", 0.0, 10, [5.0], 5.0, FinishReason.STOP)])
    table = render_comparison([("fast", fast), ("slow", slow)], "policy")
    assert [str(c.header) for c in table.columns] == ["policy", "fast", "slow"]
    assert style_of(table, "ttft_s.p99") == [BEST_STYLE, ""]  # lower TTFT wins
    assert style_of(table, "throughput_tok_s") == [BEST_STYLE, ""]  # 7/3 tok/s beats 1/5
    assert style_of(table, "num_aborted") == ["", BEST_STYLE]  # 0 aborted beats 1
    assert style_of(table, "num_requests") == ["", ""]  # not ranked


def style_of(table, metric: str) -> list[str]:
    row = list(table.columns[0].cells).index(metric)
    return [list(column.cells)[row].style for column in table.columns[1:]]


def test_metric_direction():
    assert metric_direction("ttft_s.p99") == -1
    assert metric_direction("goodput_req_s") == 1
    assert metric_direction("fairness.jain_index") == 1
    assert metric_direction("fairness.max_service_gap") == -1
    assert metric_direction("num_requests") == 0


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None,
                    reason="matplotlib installed")
def test_plot_without_matplotlib_says_how_to_get_it(tmp_path):
    with pytest.raises(ConfigError, match="shunter\\[plot\\]"):
        plot_cdf({"fcfs": [1.0, 2.0]}, tmp_path / "cdf.png")


@pytest.mark.slow  # importing matplotlib alone takes over a second
@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_plot_cdf_writes_a_file(tmp_path):
    assert plot_cdf({"fcfs": [1.0, 2.0]}, tmp_path / "cdf.png").stat().st_size > 0
