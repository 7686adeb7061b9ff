"""Issue 16, item 10 through the CLI: NaN and infinite numbers, huge trace integers and clusters
too large for this machine are one-line errors with exit code 2, never a traceback."""

from __future__ import annotations

import json

import pytest

from shunter.cli import main
from shunter.sim import footprint


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def small_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 GB available, as far as the simulator can tell (nothing big is ever built)."""
    monkeypatch.setattr(footprint, "available_memory_bytes", lambda: 10**9)


@pytest.mark.parametrize("argv, message", [
    (["simulate", "--rate", "nan"], "argument --rate: must be > 0 and finite, got nan"),
    (["simulate", "--rate", "inf"], "argument --rate: must be > 0 and finite, got inf"),
    (["simulate", "--ttft-slo", "1e999"], "argument --ttft-slo: must be > 0 and finite, got inf"),
    (["compare", "--policy", "fcfs,sjf", "--tpot-slo", "nan"], "argument --tpot-slo: must be"),
    (["sweep", "--rate", "1,inf"], "argument --rate: expected a comma-separated list of finite"),
    (["sweep", "--rate", "1", "--limit", "nan"], "argument --limit: must be finite, got nan"),
])
def test_nan_and_infinite_flags_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--quiet"])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("table, message", [
    ("[cluster]\nkv_link_bytes_s = nan\n", "s.toml [cluster]: kv_link_bytes_s must be finite, "
                                           "got nan"),
    ("[cluster]\nreplicas = 2\ndisaggregation = true\nkv_link_bytes_s = -inf\n",
     "kv_link_bytes_s must be finite, got -inf"),
    ("[slo]\nttft_s = inf\n", "s.toml [slo]: ttft_s must be finite, got inf"),
    ("[workload]\nrate = nan\n", "s.toml [workload]: rate must be finite, got nan"),
    ("[scheduler]\npolicy = \"sarathi\"\n[scheduler.policy_params]\ntbt_slo_s = inf\n",
     "tbt_slo_s must be > 0 and finite, got inf"),
    ("[cluster.migration]\nout_threshold = nan\n", "migration out_threshold must be finite"),
])
def test_nan_and_infinite_scenario_numbers_are_one_line_errors(tmp_path, capsys, table, message):
    path = tmp_path / "s.toml"
    path.write_text('[workload]\ntrace = "builtin:azure_conv_2023_sample.csv"\n'
                    'num_requests = 20\n' + table.replace("[workload]\n", ""))
    assert main(["simulate", str(path), "--quiet"]) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize("field, value, message", [
    ("input_length", 10**30, "must be <= 2147483647 (2^31 - 1), got 10000000000000000000000000"
                             "00000 (field 'input_length')"),
    ("output_length", 10**30, "(field 'output_length')"),
    ("timestamp", 10**400, "must be <= 10000000000000 ms (MAX_ARRIVAL_S = 1e+10 s)"),
    ("priority", 10**400, "(field 'priority')"),
])
def test_huge_trace_integers_name_the_file_line_and_field(tmp_path, capsys, field, value, message):
    path = tmp_path / "t.jsonl"
    good = {"timestamp": 0, "input_length": 50, "output_length": 5}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, field: value}) + "\n")
    assert main(["simulate", "--trace", str(path), "--policy", "priority", "--quiet"]) == 2
    error = one_line_error(capsys)
    assert "t.jsonl:2: " in error and message in error


def test_too_many_replicas_are_refused_saying_estimate_limit_and_way_out(capsys, small_machine):
    assert main(["simulate", "--replicas", "20000", "--num-requests", "5", "--quiet"]) == 2
    error = one_line_error(capsys)
    assert "simulating 20000 replicas (6.1 MB each) needs about 122.9 GB of memory" in error
    assert "more than the 1.0 GB available on this machine" in error
    assert "use fewer replicas (--replicas" in error


def test_a_scenario_group_count_too_large_is_refused(tmp_path, capsys, small_machine):
    path = tmp_path / "s.toml"
    path.write_text('[workload]\ntrace = "builtin:azure_conv_2023_sample.csv"\n'
                    '[cluster]\ngroups = [{gpu = "h200", count = 150}, {gpu = "h100", count = 9}]\n')
    assert main(["simulate", str(path), "--num-requests", "5", "--quiet"]) == 2
    assert "simulating 159 replicas" in one_line_error(capsys)


def test_workers_multiply_the_estimate(capsys, small_machine):
    args = ["simulate", "--replicas", "100", "--router", "round_robin", "--num-requests", "5"]
    assert main([*args, "--workers", "4", "--quiet"]) == 2  # 0.6 GB, built by each worker
    assert "100 replicas (6.1 MB each) in each of 4 workers" in one_line_error(capsys)


def test_a_sweep_with_too_many_replicas_is_refused(capsys, small_machine):
    argv = ["sweep", "--rate", "1,2", "--replicas", "2,20000", "--num-requests", "5",
            "--workers", "1", "--quiet"]
    assert main(argv) == 2
    assert "a sweep point of 20000 replicas" in one_line_error(capsys)


def test_a_cluster_that_fits_still_runs(capsys, small_machine):
    assert main(["simulate", "--replicas", "20", "--num-requests", "20", "--quiet"]) == 0
