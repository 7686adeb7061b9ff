import pytest

from shunter.config import builtin_scenario, load_scenario, resolve_trace
from shunter.errors import ConfigError
from shunter.sim.runner import build_cluster


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
    ("[cluster]\nreplicas = \"2\"\n", "replicas must be an int"),
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


@pytest.mark.parametrize("body, message", [
    ("[cluster]\nkv_link_bytes_s = nan\n", r"\[cluster\]: kv_link_bytes_s must be finite, got nan"),
    ("[cluster]\nswap_space_gib = inf\n", r"\[cluster\]: swap_space_gib must be finite, got inf"),
    ("[cluster]\nrouter_snapshot_interval_s = nan\n", "router_snapshot_interval_s must be finite"),
    ("[cluster]\nskip_prefill_cached_fraction = -inf\n", "skip_prefill_cached_fraction must be"),
    ("[workload]\nrate = inf\n", r"\[workload\]: rate must be finite, got inf"),
    ("[workload]\nrate = nan\n", r"\[workload\]: rate must be finite, got nan"),
    ("[slo]\nttft_s = nan\n", r"\[slo\]: ttft_s must be finite, got nan"),
    ("[slo]\ntpot_s = -0.5\n", "tpot_slo_s must be > 0 and finite, got -0.5"),
    ("[scheduler]\nwatermark = nan\n", r"\[scheduler\]: watermark must be finite, got nan"),
    ("[cluster.migration]\ninterval_s = nan\n", "migration interval_s must be > 0 and finite"),
    ("[cluster]\ngroups = [{gpu = \"h100\", count = nan}]\n",
     "a replica group's count must be a whole number, got nan"),
    ("[cluster]\ngroups = [{gpu = \"h100\", count = \"3\"}]\n",
     "a replica group's count must be a whole number, got '3'"),
    ("[cluster]\nrouter = \"cost\"\n[cluster.router_params]\nkv_knee = nan\n",
     "kv_knee must be in \\[0, 1\\), got nan"),
    ("[scheduler]\npolicy = \"vtc\"\n[scheduler.policy_params]\ninput_weight = inf\n",
     "input_weight must be >= 0 and finite, got inf"),
    ("[gateway]\npolicy = \"vtc\"\n[gateway.params]\ntenant_weights = {a = nan}\n",
     "tenant weight for 'a' must be > 0 and finite, got nan"),
    ("[cluster]\ndisaggregation = true\nreplicas = 2\ndecode_router = \"d2lpm\"\n"
     "[cluster.decode_router_params]\nquantum_tokens = inf\n", "quantum_tokens must be > 0"),
])
def test_nan_and_infinite_numbers_are_refused_naming_the_key(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):  # ConfigError naming the file, or, for a
        build_cluster(load_scenario(path).sim)  # policy's or router's params, when it is built


@pytest.mark.parametrize("body, message", [
    ("workload: {rate: .inf}\n", r"\[workload\]: rate must be finite, got inf"),
    (f"cluster: {{kv_link_bytes_s: {10**400}}}\n", "kv_link_bytes_s must be finite, got 1000"),
    ("slo: {ttft_s: .nan}\n", r"\[slo\]: ttft_s must be finite, got nan"),
])
def test_yaml_infinities_and_huge_ints_are_refused(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_scenario(path)


@pytest.mark.parametrize("changes, message", [
    ({"rate": float("inf")}, "rate must be > 0 and finite, got inf"),
    ({"ttft_slo_s": float("nan")}, "ttft_slo_s must be > 0 and finite, got nan"),
    ({"kv_link_bytes_s": float("nan")}, "kv_link_bytes_s must be > 0 and finite, got nan"),
])
def test_overrides_refuse_nan_and_infinities_and_change_nothing(changes, message):
    scenario = builtin_scenario()
    with pytest.raises(ConfigError, match=message):
        scenario.with_overrides(**changes)
    assert scenario == builtin_scenario()
