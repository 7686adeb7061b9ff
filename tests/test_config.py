import pytest

from shunter.config import builtin_scenario, load_scenario, resolve_trace
from shunter.errors import ConfigError


def test_builtin_scenario_names_a_shipped_trace():
    sc = builtin_scenario()
    assert sc.sim.num_replicas == 2 and sc.sim.model == "llama-3.1-8b"
    assert resolve_trace(sc.workload.trace, sc.base_dir).is_file()


def test_toml_and_yaml_scenarios_load_the_same(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('name = "x"\n[workload]\ntrace = "t.csv"\nrate = 2\n[cluster]\nreplicas = 3\n'
                    'router = "round_robin"\n[scheduler]\npolicy = "priority"\nmax_num_seqs = 64\n'
                    '[scheduler.policy_params]\naging_s = 5.0\n[slo]\nttft_s = 0.5\n')
    yml = tmp_path / "s.yaml"
    yml.write_text("name: x\nworkload: {trace: t.csv, rate: 2}\ncluster: {replicas: 3, router: round_robin}\n"
                   "scheduler: {policy: priority, max_num_seqs: 64, policy_params: {aging_s: 5.0}}\n"
                   "slo: {ttft_s: 0.5}\n")
    a, b = load_scenario(toml), load_scenario(yml)
    assert a.sim == b.sim and a.workload == b.workload and a.ttft_slo_s == b.ttft_slo_s == 0.5
    assert a.sim.num_replicas == 3 and a.sim.scheduler == {"max_num_seqs": 64}
    assert a.sim.policy_params == {"aging_s": 5.0} and a.workload.rate == 2.0
    assert resolve_trace(a.workload.trace, a.base_dir) == tmp_path / "t.csv"


@pytest.mark.parametrize("body, message", [
    ("[cluster]\nreplica = 2\n", "unknown key 'replica' in \\[cluster\\]"),
    ("[clusters]\n", "unknown table \\[clusters\\]"),
    ("[cluster]\nreplicas = \"2\"\n", "replicas must be a int"),
    ("[cluster]\nreplicas = 0\n", "num_replicas must be >= 1"),
    ("[scheduler]\nenable_chunked_prefill = 1\n", "must be a bool"),
    ("[workload]\nrate = -1\n", "rate must be > 0"),
    ("[cluster\n", "not valid TOML"),
])
def test_bad_scenarios_name_the_file_table_and_key(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message) as info:
        load_scenario(path)
    assert "bad.toml" in str(info.value)


def test_missing_and_unknown_kind_of_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_scenario(tmp_path / "nope.toml")
    other = tmp_path / "s.json"
    other.write_text("{}")
    with pytest.raises(ConfigError, match=".toml, .yaml or .yml"):
        load_scenario(other)


def test_unknown_builtin_trace_lists_the_available_ones():
    with pytest.raises(ConfigError, match="azure_conv_2023_sample.csv"):
        resolve_trace("builtin:nope.csv", None)
