"""The simulator's gateway tier: requests wait in a core policy's order and go to replicas
holding fewer than max_inflight of them."""

import pytest
from tests.factories import make_spec

from shunter.config import scenario_from_dict
from shunter.errors import ConfigError
from shunter.metrics.summary import summarize
from shunter.sim.config import SimConfig
from shunter.sim.gateway import SimGateway
from shunter.sim.partition import partition_blocker
from shunter.sim.runner import build_cluster, simulate


def flood(heavy_rate: float = 25.0, light_rate: float = 5.0, duration_s: float = 30.0):
    """Two tenants on fixed schedules: `heavy` sends 5x `light`'s rate."""
    specs = []
    for tenant, rate in (("heavy", heavy_rate), ("light", light_rate)):
        n = int(duration_s * rate)
        specs += [make_spec(f"{tenant}{i}", arrival_s=i / rate, tenant=tenant,
                            num_prompt_tokens=200, num_output_tokens=100) for i in range(n)]
    return sorted(specs, key=lambda s: (s.arrival_s, s.request_id))


SATURATED = dict(model="llama-3.1-8b", gpu="a100-80gb", num_replicas=2, router="round_robin",
                 scheduler={"max_num_seqs": 64})


def light_ttft(config: SimConfig) -> float:
    run = simulate(config, flood())
    return summarize([r for r in run.records if r.tenant == "light"]).ttft_s.mean


def test_without_a_gateway_nothing_changes_and_runs_can_be_split():
    config = SimConfig(**SATURATED)
    assert not config.has_gateway and build_cluster(config).gateway is None
    assert partition_blocker(config) is None
    assert partition_blocker(SimConfig(**SATURATED, gateway_max_inflight=4)) == \
        "the gateway tier's queue feeds every replica"


def test_in_flight_per_replica_is_capped_and_everything_finishes(monkeypatch):
    config = SimConfig(**SATURATED, gateway_policy="fcfs", gateway_max_inflight=3)
    cluster = build_cluster(config)
    peak = [0, 0]
    original = SimGateway.dispatched

    def watch(self, request, view):
        original(self, request, view)
        peak[view.replica_id] = max(peak[view.replica_id], self.num_in_flight[view.replica_id])
    monkeypatch.setattr(SimGateway, "dispatched", watch)
    specs = flood(duration_s=10.0)
    records = cluster.run(specs)
    assert len(records) == len(specs) and peak == [3, 3]
    assert cluster.gateway.num_in_flight == [0, 0] and len(cluster.gateway.queue) == 0
    # records keep the gateway arrival: the wait at the gateway counts in TTFT and queueing
    assert all(r.first_scheduled_s >= r.arrival_s for r in records)
    late = max(records, key=lambda r: r.first_scheduled_s - r.arrival_s)
    assert late.first_scheduled_s - late.arrival_s > 1.0


def test_vtc_at_the_gateway_serves_the_light_tenant_sooner_than_fcfs():
    fcfs = light_ttft(SimConfig(**SATURATED, gateway_policy="fcfs", gateway_max_inflight=8))
    vtc = light_ttft(SimConfig(**SATURATED, gateway_policy="vtc", gateway_max_inflight=8))
    assert vtc * 3 < fcfs, (vtc, fcfs)


def test_the_gateway_policy_is_checked_when_the_config_is_built():
    with pytest.raises(ValueError, match="cannot order the gateway"):
        SimConfig(gateway_policy="mlfq")
    with pytest.raises(ValueError, match="unknown scheduling policy 'nope'"):
        SimConfig(gateway_policy="nope")
    with pytest.raises(ValueError, match="max_inflight_per_replica must be >= 1"):
        SimConfig(gateway_max_inflight=0)
    with pytest.raises(ValueError, match="disaggregated"):
        SimConfig(num_replicas=2, disaggregation=True, gateway_max_inflight=2)


def test_scenario_gateway_table():
    scenario = scenario_from_dict({"gateway": {"policy": "plas", "params": {"aging_s": 10.0},
                                               "max_inflight_per_replica": 7}},
                                  where="s.toml")
    assert scenario.sim.gateway_settings == ("plas", {"aging_s": 10.0}, 7)
    with pytest.raises(ConfigError, match=r"s.toml: unknown key 'max_inflight' in \[gateway\]"):
        scenario_from_dict({"gateway": {"max_inflight": 7}}, where="s.toml")
    with pytest.raises(ConfigError, match=r"s.toml: gateway policy: .*fastswitch"):
        scenario_from_dict({"gateway": {"policy": "fastswitch"}}, where="s.toml")
