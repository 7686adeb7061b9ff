"""LoRA adapters in the simulator: exact bulk decode runs, determinism, affinity routing,
scenario tables."""

import statistics

import pytest
from tests.sim.test_fast_forward import fingerprint, varied_workload

from shunter.config import scenario_from_dict
from shunter.errors import ConfigError
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate
from shunter.workload import SyntheticWorkload, generate
from shunter.workload.lora import assign_loras

LORA_SCENARIOS = {
    "one-slot": SimConfig(num_replicas=2, lora={"max_loras": 1}),
    "slots-lru": SimConfig(num_replicas=2, router="lora_affinity",
                           lora={"max_loras": 3, "max_cpu_loras": 4}),
    "memory-pressure": SimConfig(num_blocks=300, lora={"max_loras": 2},
                                 scheduler={"max_num_seqs": 16}),
    "small-budget": SimConfig(num_replicas=3, router="round_robin", lora={"max_loras": 2},
                              scheduler={"max_num_batched_tokens": 256, "max_num_seqs": 8}),
    "vtc-blocking-head": SimConfig(policy="vtc", lora={"max_loras": 2, "max_lora_rank": 64}),
}


def lora_workload(seed: int, num_adapters: int = 6) -> list:
    specs = varied_workload(seed, n=150)
    with_adapters = assign_loras(specs, num_adapters, seed=seed)
    # a fifth of the requests use the base model
    return [s if i % 5 == 0 else t for i, (s, t) in enumerate(zip(specs, with_adapters, strict=True))]


@pytest.mark.parametrize("name", sorted(LORA_SCENARIOS))
@pytest.mark.parametrize("seed", [0, 1])
def test_bulk_decode_runs_with_adapters_match_step_by_step(name, seed):
    config = LORA_SCENARIOS[name]
    specs = lora_workload(seed)
    fast = simulate(config, specs)
    slow = simulate(SimConfig(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                                 "fast_forward": False}), specs)
    assert fingerprint(fast) == fingerprint(slow)
    assert fast.topology_stats == slow.topology_stats  # the same adapter loads
    assert fast.topology_stats["lora_loads"] > 0


def test_same_seed_same_run():
    config = LORA_SCENARIOS["slots-lru"]
    assert fingerprint(simulate(config, lora_workload(2))) == \
        fingerprint(simulate(config, lora_workload(2)))


def test_adapters_cost_time():
    specs = lora_workload(3)
    plain = simulate(SimConfig(num_replicas=2), varied_workload(3, n=150))
    served = simulate(SimConfig(num_replicas=2, lora={"max_loras": 2}), specs)
    assert statistics.mean(r.e2e_s for r in served.records) > \
        statistics.mean(r.e2e_s for r in plain.records)


def test_adapter_affinity_beats_load_balancing_on_loads_and_ttft():
    specs = generate(SyntheticWorkload(num_requests=600, rate=12.0), seed=4)
    specs = assign_loras(specs, 40, zipf=1.0, seed=4)
    results = {}
    for router in ("round_robin", "least_load", "lora_affinity"):
        run = simulate(SimConfig(num_replicas=4, router=router,
                                 lora={"max_loras": 4, "max_cpu_loras": 40}), specs)
        results[router] = (run.topology_stats["lora_loads"],
                           statistics.mean(r.ttft_s for r in run.records))
    loads, ttft = results["lora_affinity"]
    for other in ("round_robin", "least_load"):
        assert loads < 0.85 * results[other][0]
        assert ttft < results[other][1]


def test_the_lora_table_is_read_and_checked():
    scenario = scenario_from_dict({"lora": {"max_loras": 4, "num_adapters": 10, "zipf": 0.5}})
    assert scenario.sim.lora_config.max_loras == 4
    with pytest.raises(ConfigError, match="max_lora_rnak"):
        scenario_from_dict({"lora": {"max_lora_rnak": 8}})
    with pytest.raises(ConfigError, match="max_loras"):
        scenario_from_dict({"lora": {"max_loras": 0}})
    with pytest.raises(ConfigError, match="max_loras"):  # set by [lora], not [scheduler]
        scenario_from_dict({"scheduler": {"max_loras": 2}})
    with pytest.raises(ConfigError, match="roofline"):
        scenario_from_dict({"lora": {}, "cluster": {"cost_model": "profile"}})


def test_adapters_without_a_lora_table_are_refused_not_run_as_the_base_model():
    """A trace's lora_id in a scenario without [lora] used to run as the base model silently."""
    specs = lora_workload(3)
    with pytest.raises(ConfigError, match=r"120 requests name LoRA adapters .* add a \[lora\]"):
        simulate(SimConfig(num_replicas=2), specs)
    with pytest.raises(ConfigError, match=r"LoRA adapters \(lora_id, e.g. 'lora-"):
        simulate(SimConfig(num_replicas=2), iter(specs))  # lazy: at its first such request
