"""Application DAGs: dependency order, release after every producer, the client delay, and
clear errors for cycles, unknown variables and malformed lines."""

import json

import pytest

from shunter.errors import ConfigError
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate
from shunter.workload.dag import (
    DagApp,
    DagCall,
    chain_app,
    dag_workload,
    load_dag_apps,
    map_reduce_app,
)


def test_a_map_reduce_app_releases_its_reduce_after_the_last_map():
    app = map_reduce_app("doc", 1.0, [100, 200, 300], map_output_tokens=10,
                         reduce_output_tokens=20, instruction_tokens=5)
    work = dag_workload([app])
    assert [s.request_id for s in work.first_calls] == ["doc:map0", "doc:map1", "doc:map2"]
    follow = work.follow_ups["doc:map1"]
    assert follow.num_dependencies == 3 and follow.spec.request_id == "doc:reduce"
    assert follow.spec.num_prompt_tokens == 5 + 3 * 10  # the summaries join its prompt
    records = {r.request_id: r for r in simulate(SimConfig(), work.first_calls,
                                                 follow_ups=work.follow_ups).records}
    assert len(records) == 4
    last_map = max(records[f"doc:map{k}"].finish_s for k in range(3))
    assert records["doc:reduce"].arrival_s == pytest.approx(last_map)
    assert {r.program_id for r in records.values()} == {"doc"}


def test_the_client_delay_holds_each_dependent_call():
    app = chain_app("c", 0.0, [50, 50, 50], output_tokens=8)
    for delay in (0.0, 0.25):
        work = dag_workload([app], client_delay_s=delay)
        records = {r.request_id: r for r in simulate(SimConfig(), work.first_calls,
                                                     follow_ups=work.follow_ups).records}
        assert records["c:step1"].arrival_s == pytest.approx(records["c:step0"].finish_s + delay)
        assert records["c:step2"].arrival_s == pytest.approx(records["c:step1"].finish_s + delay)
    with pytest.raises(ConfigError, match="client_delay_s"):
        dag_workload([app], client_delay_s=-1.0)


def call(name, inputs=(), output=None):
    return DagCall(name=name, prompt_tokens=10, output_tokens=5, inputs=inputs, output=output)


@pytest.mark.parametrize("calls, message", [
    ((call("a", ("y",), "x"), call("b", ("x",), "y")), "a cycle: a -> b -> a"),
    ((call("a", ("nope",)),), "reads variable 'nope', which no call writes"),
    ((call("a", (), "x"), call("b", (), "x")), "'x' is written by both 'a' and 'b'"),
    ((call("a"), call("a")), "two calls are named 'a'"),
    ((), "no calls"),
])
def test_bad_graphs_are_refused_by_name(calls, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        dag_workload([DagApp(app_id="app", arrival_s=0.0, calls=calls)])


def test_a_file_loads_and_a_bad_line_is_named(tmp_path):
    good = {"app_id": "a", "arrival_s": 0.5, "calls": [
        {"name": "m", "prompt_tokens": 10, "output_tokens": 4, "output": "v"},
        {"name": "r", "prompt_tokens": 3, "output_tokens": 2, "inputs": ["v"]}]}
    path = tmp_path / "apps.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "app_id": "b"}) + "\n")
    apps = load_dag_apps(path)
    assert [a.app_id for a in apps] == ["a", "b"] and apps[1].calls[1].inputs == ("v",)
    cases = [
        ({**good, "calls": [{**good["calls"][0], "inputs": ["v"]}]}, "line 3: .*a cycle: m -> m"),
        ({**good, "calls": [good["calls"][1]]}, "line 3: .*'r' reads variable 'v'"),
        ({**good, "calls": [{**good["calls"][0], "output_tokens": 0}]}, "line 3: .*output_tokens"),
        ({**good, "calls": [{**good["calls"][0], "temperature": 1}]}, "line 3: .*temperature"),
        ({**good, "arrival_s": float("nan")}, "line 3: arrival_s"),
        ({**good, "app_id": "a"}, "'a' is used twice"),
        ({**good, "calls": []}, "line 3: calls must be a non-empty list"),
    ]
    for bad, message in cases:
        path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
        with pytest.raises(ConfigError, match=message):
            load_dag_apps(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ConfigError, match="line 2: not JSON"):
        load_dag_apps(path)
