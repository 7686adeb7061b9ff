"""`shunter bench` and `shunter profile` end to end against a fake server (127.0.0.1)."""

from __future__ import annotations

import argparse
import json

import pytest
from tests.bench.fake import fake_endpoint

from shunter.cli.bench import add_bench_parser, parse_floats, workload_specs
from shunter.cli.profile import add_profile_parser
from shunter.errors import ConfigError
from shunter.sim.cost.profile import load_profile


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="shunter")
    sub = parser.add_subparsers(dest="command")
    add_bench_parser(sub)
    add_profile_parser(sub)
    return parser.parse_args(argv)


def run(*argv: str) -> int:
    args = parse(*argv)
    return args.handler(args)


def test_bench_generated_workload_writes_json(tmp_path) -> None:
    out = tmp_path / "r.json"
    with fake_endpoint() as (url, _):
        assert run("bench", url, "--rate", "200", "--num-requests", "6", "--prompt-tokens", "12",
                   "--output-tokens", "3", "--tenants", "a:1,b:1", "--json", str(out),
                   "--quiet") == 0
    result = json.loads(out.read_text())
    assert result["num_completed"] == 6 and result["model"] == "fake-model"  # asked the server
    assert result["num_output_tokens"] == 18 and set(result["tenants"]) <= {"a", "b"}


def test_bench_sweeps_rates_and_replays_traces(tmp_path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(f'{{"timestamp": {i * 10}, "input_length": 8, "output_length": 2}}\n'
                             for i in range(4)))
    out = tmp_path / "r.json"
    with fake_endpoint() as (url, _):
        assert run("bench", url, "--rate", "100,200", "--num-requests", "3", "--output-tokens",
                   "2", "--json", str(out), "--quiet") == 0
        rows = json.loads(out.read_text())
        assert [r["run"] for r in rows] == ["rate=100", "rate=200"]
        assert run("bench", url, "--trace", str(trace), "--json", str(out), "--quiet") == 0
    result = json.loads(out.read_text())
    assert result["run"] == "trace" and result["num_completed"] == 4


def test_rate_lists_and_bad_values() -> None:
    assert parse_floats("1, 2.5") == (1.0, 2.5)
    for bad in ("0", "x", ","):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_floats(bad)
    args = parse("bench", "http://h/v1", "--arrival", "gamma", "--cv", "4", "--num-requests", "50")
    arrivals = [s.arrival_s for s in workload_specs(args, 10.0, 4.0)]
    assert len(arrivals) == 50 and arrivals == sorted(arrivals)


@pytest.mark.slow  # renders the plots
def test_bench_report_dir(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    with fake_endpoint() as (url, _):
        assert run("bench", url, "--rate", "100", "--num-requests", "4", "--output-tokens", "3",
                   "--report", str(tmp_path / "rep"), "--quiet") == 0
    assert (tmp_path / "rep" / "index.html").stat().st_size > 10_000


def test_profile_url_writes_a_profile_the_simulator_reads(tmp_path) -> None:
    out = tmp_path / "p.json"
    with fake_endpoint(first_token_delay_s=0.01, token_delay_s=0.005) as (url, _):
        assert run("profile", url, "--model", "smollm2-135m", "--prefill-tokens", "8,16,32,64,128",
                   "--batch-sizes", "1,2,4", "--contexts", "8,16,24", "--decode-tokens", "5",
                   "--repeats", "1", "--kv-capacity-tokens", "4096", "--out", str(out),
                   "--quiet") == 0
    profile = load_profile(out)
    assert len(profile.samples) == 14 and profile.kv_capacity_tokens == 4096
    assert profile.max_model_len == 8192  # the catalog's SmolLM2


def test_profile_needs_exactly_one_target() -> None:
    with pytest.raises(ConfigError, match="either"):
        run("profile")
    with pytest.raises(ConfigError, match="either"):
        run("profile", "http://h/v1", "--engine")
