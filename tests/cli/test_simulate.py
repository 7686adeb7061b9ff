"""The CLI contract of issue 2: flags, JSON keys, errors, --help."""

import json

import pytest

from shunter.cli import main

LATENCY_KEYS = {"mean", "p50", "p90", "p99"}
CONTRACT_KEYS = {"num_requests", "num_completed", "duration_s", "throughput_tok_s", "ttft_s",
                 "tpot_s", "itl_s", "e2e_s", "queue_s", "slo_attainment", "goodput_req_s",
                 "num_preemptions", "prefix_hit_rate", "fairness", "tenants"}


def write_trace(tmp_path, n=30):
    path = tmp_path / "trace.jsonl"
    lines = [json.dumps({"timestamp": i * 100, "input_length": 200 + i, "output_length": 20,
                         "tenant": "a" if i % 3 else "b"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_simulate_builtin_scenario_writes_the_contract_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["simulate", "--num-requests", "40", "--json", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert set(data) >= CONTRACT_KEYS
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_s"):
        assert set(data[key]) == LATENCY_KEYS
    assert set(data["fairness"]) >= {"max_service_gap", "jain_index"}
    assert list(data["tenants"]) == ["default"]
    assert set(data["tenants"]["default"]) >= {"num_requests", "service", "ttft_s", "e2e_s"}
    assert data["num_requests"] == data["num_completed"] == 40
    assert "ttft_s.p99" in capsys.readouterr().out


def test_simulate_with_trace_flags_and_csv(tmp_path):
    trace = write_trace(tmp_path)
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    rc = main(["simulate", "--trace", str(trace), "--trace-format", "jsonl", "--model", "qwen2.5-7b",
               "--gpu", "h100", "--replicas", "2", "--policy", "priority", "--router", "round_robin",
               "--seed", "3", "--json", str(out_json), "--csv", str(out_csv), "--quiet"])
    assert rc == 0
    data = json.loads(out_json.read_text())
    assert data["policy"] == "priority" and data["router"] == "round_robin"
    assert data["model"] == "qwen2.5-7b" and data["replicas"] == 2
    assert set(data["tenants"]) == {"a", "b"}
    header = out_csv.read_text().splitlines()[0].split(",")
    assert "ttft_s.p99" in header and "fairness.jain_index" in header


def test_simulate_is_deterministic(tmp_path):
    trace = write_trace(tmp_path)
    outs = []
    for name in ("a.json", "b.json"):
        main(["simulate", "--trace", str(trace), "--json", str(tmp_path / name), "--quiet"])
        data = json.loads((tmp_path / name).read_text())
        data.pop("wall_s")
        outs.append(data)
    assert outs[0] == outs[1]


def test_compare_policies_writes_a_list(tmp_path, capsys):
    trace = write_trace(tmp_path)
    out = tmp_path / "c.json"
    rc = main(["compare", "--policy", "fcfs,priority", "--trace", str(trace), "--json", str(out),
               "--quiet"])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r["policy"] for r in rows] == ["fcfs", "priority"]
    assert "fcfs" in capsys.readouterr().out


def test_compare_routers(tmp_path):
    trace = write_trace(tmp_path)
    out = tmp_path / "c.json"
    assert main(["compare", "--router", "round_robin,least_load", "--replicas", "2", "--trace",
                 str(trace), "--json", str(out), "--quiet"]) == 0
    assert [r["router"] for r in json.loads(out.read_text())] == ["round_robin", "least_load"]


def test_compare_gateway_policies_under_a_fixed_engine_policy(tmp_path, capsys):
    trace = write_trace(tmp_path)
    out = tmp_path / "c.json"
    assert main(["compare", "--gateway-policy", "fcfs,vtc", "--policy", "sjf",
                 "--gateway-max-inflight", "2", "--trace", str(trace), "--json", str(out),
                 "--quiet"]) == 0
    rows = json.loads(out.read_text())
    assert [(r["gateway_policy"], r["policy"], r["gateway_max_inflight"]) for r in rows] == [
        ("fcfs", "sjf", 2), ("vtc", "sjf", 2)]
    assert "gateway policy" in capsys.readouterr().out


def test_simulate_with_a_gateway_tier_names_it(tmp_path, capsys):
    trace = write_trace(tmp_path)
    assert main(["simulate", "--trace", str(trace), "--gateway-max-inflight", "3",
                 "--quiet"]) == 0
    assert "gateway vtc (<= 3 in flight per replica)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv, message", [
    (["simulate", "--gateway-policy", "mlfq"], "cannot order the gateway's queue"),
    (["simulate", "--gateway-policy", "nope"], "unknown scheduling policy 'nope'"),
    (["compare", "--policy", "fcfs,sjf", "--gateway-policy", "fcfs,vtc"], "one thing at a time"),
    (["compare", "--gateway-policy", "fcfs,nope"], "unknown gateway policy 'nope'"),
    (["compare"], "compare needs --policy"),
    (["simulate", "--policy", "nope"], "unknown scheduling policy 'nope'; valid: "),
    (["simulate", "--router", "nope"], "unknown router 'nope'"),
    (["simulate", "--model", "gpt-9"], "gpt-9"),
    (["simulate", "--trace", "/does/not/exist.csv"], "exist.csv"),
    (["compare", "--policy", "fcfs,nope"], "unknown policy 'nope'"),
])
def test_bad_input_is_a_clear_error_with_exit_code_2(argv, message, capsys):
    assert main([*argv, "--quiet"]) == 2
    assert message in " ".join(capsys.readouterr().err.split())


def test_bad_flag_values_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--num-requests", "0"])
    assert info.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_help_lists_policies_and_routers(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = capsys.readouterr().out
    assert "fcfs" in text and "priority" in text and "least_load" in text and "--trace-format" in text


def test_workers_split_a_load_blind_run_with_the_same_results(tmp_path, capsys):
    args = ["simulate", "--num-requests", "120", "--router", "round_robin", "--replicas", "3"]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main([*args, "--json", str(one), "--quiet"]) == 0
    assert main([*args, "--json", str(two), "--workers", "2"]) == 0
    assert "2 worker processes" in capsys.readouterr().out
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b


def test_workers_say_why_a_run_stays_in_one_process(capsys):
    assert main(["simulate", "--num-requests", "20", "--replicas", "2", "--workers", "2"]) == 0
    assert "one process (router 'least_load' reads replica state)" in capsys.readouterr().out


def test_a_trace_shorter_than_num_requests_says_so(tmp_path, capsys):
    trace = write_trace(tmp_path, n=30)
    assert main(["simulate", "--trace", str(trace), "--num-requests", "50", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "trace.jsonl holds 30 requests, fewer than the 50 asked for (--num-requests)" in err
    assert main(["simulate", "--trace", str(trace), "--num-requests", "30", "--quiet"]) == 0
    assert "fewer than" not in capsys.readouterr().err


def test_workers_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--workers", "0"])
    assert "--workers" in capsys.readouterr().err


def test_auto_workers_split_only_long_runs_whose_replicas_never_interact(monkeypatch):
    from shunter.cli.common import AUTO_WORKERS_MIN_REQUESTS
    from shunter.cli.simulate import auto_workers
    from shunter.config import builtin_scenario
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    scenario = builtin_scenario()
    rr = scenario.with_overrides(router="round_robin", num_replicas=4)
    assert auto_workers(rr, AUTO_WORKERS_MIN_REQUESTS) == 4  # at most one per replica
    assert auto_workers(rr, AUTO_WORKERS_MIN_REQUESTS - 1) == 1  # too short to pay for them
    assert auto_workers(rr.with_overrides(num_replicas=16), AUTO_WORKERS_MIN_REQUESTS) == 8
    least = rr.with_overrides(router="least_load")
    assert auto_workers(least, 10 * AUTO_WORKERS_MIN_REQUESTS) == 1  # its replicas interact


def test_workers_auto_is_the_default_and_a_word(capsys):
    assert main(["simulate", "--num-requests", "20", "--workers", "auto", "--quiet"]) == 0
    with pytest.raises(SystemExit):
        main(["simulate", "--workers", "many"])
    assert "--workers" in capsys.readouterr().err


def test_router_params_reach_the_router_and_unknown_keys_are_named(tmp_path, capsys):
    def run(params: str) -> dict:
        out = tmp_path / "r.json"
        assert main(["simulate", "--num-requests", "60", "--replicas", "3", "--router", "random",
                     "--router-params", params, "--workers", "1", "--json", str(out),
                     "--quiet"]) == 0
        return json.loads(out.read_text())["e2e_s"]

    assert run('{"seed": 1}') == run('{"seed": 1}')
    assert run('{"seed": 1}') != run('{"seed": 2}')  # the seed is honoured
    capsys.readouterr()
    assert main(["simulate", "--num-requests", "5", "--router", "random", "--router-params",
                 '{"sed": 1}', "--quiet"]) == 2
    assert "'sed'" in capsys.readouterr().err


def test_a_trace_naming_adapters_without_lora_flags_is_refused(tmp_path, capsys):
    trace = tmp_path / "lora.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 100, "output_length": 10, "lora_id": "sql"}\n'
                     '{"timestamp": 0.5, "input_length": 100, "output_length": 10}\n')
    assert main(["simulate", "--trace", str(trace), "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "1 request names LoRA adapters (lora_id, e.g. 'sql')" in err
    assert "--max-loras" in err
    assert main(["simulate", "--trace", str(trace), "--max-loras", "1", "--quiet"]) == 0
