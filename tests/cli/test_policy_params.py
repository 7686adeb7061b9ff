"""Policy parameters reach only the policies that take them, in simulate, compare and sweep
(issue 17: `compare --policy priority,fcfs` with `aging_s` crashed fcfs)."""

import json

import pytest

from shunter.cli import main
from shunter.config import load_scenario


def write_scenario(tmp_path, policy_params: str, policy: str = "priority"):
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps({"timestamp": i * 50, "input_length": 300 + i,
                                         "output_length": 16, "priority": i % 2}) + "\n"
                             for i in range(24)))
    path = tmp_path / "s.toml"
    path.write_text(f'[workload]\ntrace = "trace.jsonl"\n[scheduler]\npolicy = "{policy}"\n'
                    f"policy_params = {policy_params}\n")
    return path


@pytest.mark.parametrize("params", ["{ aging_s = 7.0 }", "{ priority = { aging_s = 7.0 } }"])
def test_compare_gives_aging_s_to_priority_only(tmp_path, params):
    scenario = write_scenario(tmp_path, params)
    out = tmp_path / "r.json"
    assert main(["compare", str(scenario), "--policy", "priority,fcfs", "--json", str(out),
                 "--quiet"]) == 0
    assert [row["policy"] for row in json.loads(out.read_text())] == ["priority", "fcfs"]


def test_compare_flag_params_are_scoped_even_over_a_scenario_of_another_policy(tmp_path):
    scenario = write_scenario(tmp_path, "{ fcfs = {} }", policy="fcfs")
    assert main(["compare", str(scenario), "--policy", "priority,fcfs", "--policy-params",
                 '{"aging_s": 7.0}', "--quiet"]) == 0


def test_a_key_no_compared_policy_takes_is_an_error(tmp_path, capsys):
    scenario = write_scenario(tmp_path, "{ aging_s = 7.0 }")
    assert main(["compare", str(scenario), "--policy", "sjf,fcfs", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'aging_s' is taken by none of the policies run (sjf, fcfs)" in err


def test_simulate_with_another_policy_keeps_nested_params_and_refuses_bare_ones(tmp_path, capsys):
    nested = write_scenario(tmp_path, "{ priority = { aging_s = 7.0 } }")
    assert main(["simulate", str(nested), "--policy", "fcfs", "--quiet"]) == 0
    bare = write_scenario(tmp_path, "{ aging_s = 7.0 }")
    assert main(["simulate", str(bare), "--policy", "fcfs", "--quiet"]) == 2
    assert "'aging_s' is taken by none of the policies run (fcfs)" in capsys.readouterr().err


def test_a_bad_nested_key_fails_when_the_scenario_loads(tmp_path):
    with pytest.raises(ValueError, match="priority takes no 'agin_s'"):
        load_scenario(write_scenario(tmp_path, "{ priority = { agin_s = 7.0 } }"))


def test_sweep_splits_the_table_between_its_policies(tmp_path):
    scenario = write_scenario(tmp_path, "{ aging_s = 7.0 }")
    out = tmp_path / "rows.json"
    assert main(["sweep", str(scenario), "--policy", "fcfs,priority,sarathi", "--rate", "4",
                 "--workers", "1", "--json", str(out), "--quiet"]) == 0
    assert [row["policy"] for row in json.loads(out.read_text())] == ["fcfs", "priority",
                                                                       "sarathi"]
    assert main(["sweep", str(scenario), "--policy", "fcfs,sarathi", "--rate", "4",
                 "--workers", "1", "--quiet"]) == 2


def test_compare_gateway_policies_scope_gateway_params(tmp_path):
    scenario = write_scenario(tmp_path, "{}")
    assert main(["compare", str(scenario), "--gateway-policy", "fcfs,vtc", "--gateway-params",
                 '{"tenant_weights": {"a": 2.0}}', "--quiet"]) == 0
