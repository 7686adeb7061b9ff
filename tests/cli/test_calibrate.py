"""Issue 19: `shunter calibrate URL` replays a slice on a live backend and on the simulator fitted
to it, in one command (here against the fake OpenAI server: each stream's tokens 4 ms apart)."""

from __future__ import annotations

import json

import pytest
from tests.bench.fake import MODEL, fake_endpoint
from tests.cli.test_user_errors import dead_url, one_line_error

from shunter.cli import main
from shunter.cli.calibrate import compare, headline_errors, shrink
from shunter.core.types import RequestSpec
from shunter.metrics.summary import summarize

_SMALL = ["--num-requests", "10", "--rate", "20", "--replays", "2", "--max-model-len", "4096",
          "--kv-bytes-per-token", "1000", "--quiet"]


def test_calibrate_prints_the_error_table_and_writes_its_files(tmp_path, capsys) -> None:
    out = tmp_path / "cal"
    with fake_endpoint(num_output_tokens=64, token_delay_s=0.004,
                       first_token_delay_s=0.01) as (url, _):
        assert main(["calibrate", url, *_SMALL, "--kv-capacity-tokens", "16384",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{url} ({MODEL}): [10, 10] of 10 completed" in text
    for metric in ("ttft_s.p50", "tpot_s.p99", "e2e_s.mean"):
        assert metric in text
    result = json.loads((out / "calibration.json").read_text())
    assert [row["metric"] for row in result["rows"]][:3] == ["ttft_s.mean", "ttft_s.p50",
                                                              "ttft_s.p99"]
    assert result["settings"]["kv_capacity_tokens"] == 16384
    # the fake's streams are 4 ms a token at any concurrency: the fitted profile must predict
    # the token gaps of the replays (the simulated E2E then follows them)
    errors = result["median_abs_error"]
    assert errors["tpot_s.p50"] < 0.3 and errors["e2e_s.p50"] < 0.3, errors
    assert (out / "profile.json").is_file()
    page = (out / "report" / "index.html").read_text()
    assert "simulated vs real" in page and "tpot_s.p50" in page


def test_a_backend_that_does_not_report_its_kv_size_needs_the_flag(tmp_path, capsys) -> None:
    with fake_endpoint(num_output_tokens=8) as (url, _):
        code = main(["calibrate", url, *_SMALL, "--out", str(tmp_path / "cal")])
    if code == 0:
        pytest.skip("the fake server reports its KV capacity")
    assert one_line_error(capsys) == ("error: the backend does not report its KV capacity "
                                      "(vLLM does, on /metrics): give --kv-capacity-tokens")


def test_a_dead_url_is_one_line_naming_it(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    url = dead_url()
    assert main(["calibrate", url, *_SMALL]) == 2
    assert one_line_error(capsys) == f"error: cannot reach {url}: Connection refused"


def test_output_bounds_that_cross_are_refused_before_any_request(capsys) -> None:
    assert main(["calibrate", dead_url(), "--min-output-tokens", "40", "--max-output-tokens",
                 "32", "--quiet"]) == 2
    assert one_line_error(capsys) == ("error: --min-output-tokens (40) is above "
                                      "--max-output-tokens (32)")


def test_shrink_scales_caps_and_clamps() -> None:
    specs = [RequestSpec(request_id="a", arrival_s=0.0, num_prompt_tokens=2000,
                         num_output_tokens=1),
             RequestSpec(request_id="b", arrival_s=1.0, num_prompt_tokens=20,
                         num_output_tokens=500)]
    a, b = shrink(specs, prompt_scale=0.25, max_prompt_tokens=256, max_output_tokens=32,
                  min_output_tokens=4)
    assert (a.num_prompt_tokens, a.num_output_tokens) == (256, 4)
    assert (b.num_prompt_tokens, b.num_output_tokens) == (8, 32)  # at least 8 prompt tokens


def test_compare_gives_each_replays_error_and_the_median() -> None:
    from shunter.core.types import FinishReason
    from shunter.metrics.record import RequestRecord

    def run(ttft_s: float) -> list[RequestRecord]:
        records = []
        for i in range(4):
            records.append(RequestRecord(
                request_id=f"r{i}", arrival_s=float(i), num_prompt_tokens=10,
                token_times_s=[i + ttft_s, i + ttft_s + 0.1], finish_s=i + ttft_s + 0.1,
                finish_reason=FinishReason.LENGTH))
        return records

    rows = compare([summarize(run(1.0)), summarize(run(2.0))],
                   [summarize(run(1.1)), summarize(run(1.8))])
    ttft = next(row for row in rows if row["metric"] == "ttft_s.mean")
    assert ttft["error"] == pytest.approx([0.1, -0.1])
    assert ttft["real_vs_first"] == pytest.approx([1.0])
    assert headline_errors(rows)["ttft_s.mean"] == pytest.approx(0.1)
