"""A run split across processes gives the one-process run's records, exactly."""

from __future__ import annotations

import os

import pytest
from tests.factories import poisson_specs

from shunter.core.types import RequestSpec
from shunter.sim.config import SimConfig
from shunter.sim.partition import partition_blocker, simulate_parallel
from shunter.sim.runner import simulate
from shunter.sim.stream import RecordSpill
from shunter.workload.lora import assign_loras


def workload(n: int, seed: int = 5, rate: float = 12.0, loras: bool = False) -> list[RequestSpec]:
    specs = poisson_specs(n, seed=seed, rate=rate, outputs=(1, 5, 40, 200, 900))
    return assign_loras(specs, 6, zipf=1.0, seed=seed) if loras else specs


def by_request(records: list) -> list[tuple]:
    return sorted((r.request_id, r.replica_id, r.arrival_s, r.first_scheduled_s, r.finish_s,
                   r.finish_reason, r.num_preemptions, list(r.token_times_s)) for r in records)


CONFIGS = {
    "round_robin, memory pressure": SimConfig(
        num_replicas=3, router="round_robin", num_blocks=300,
        scheduler={"max_model_len": 4096}),
    "random, prefill-first": SimConfig(
        num_replicas=4, router="random", router_params={"seed": 7},
        scheduler={"enable_chunked_prefill": False, "enable_prefix_caching": False}),
    "round_robin, LoRA adapters": SimConfig(num_replicas=2, router="round_robin",
                                            lora={"max_loras": 2, "max_cpu_loras": 3}),
    "round_robin, mlfq": SimConfig(num_replicas=2, router="round_robin", policy="mlfq",
                                   scheduler={"max_num_seqs": 4}),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("workers", [2, 3])
def test_split_run_equals_one_process(name, workers):
    config, specs = CONFIGS[name], workload(160, loras=CONFIGS[name].lora is not None)
    one = simulate(config, specs)
    split = simulate_parallel(config, lambda: iter(specs), workers=workers)
    assert by_request(split.records) == by_request(one.records)
    assert split.num_routed == one.num_routed
    assert split.num_preemptions == one.num_preemptions
    assert split.topology_stats == one.topology_stats
    assert [r.finish_s for r in split.records] == sorted(r.finish_s for r in split.records)


def test_split_streamed_run_appends_every_worker_rows():
    config, specs = CONFIGS["round_robin, memory pressure"], workload(200)
    with RecordSpill() as one_spill:
        simulate(config, specs, on_record=one_spill)
        one = one_spill.summary()
    with RecordSpill() as spill:
        run = simulate_parallel(config, lambda: iter(specs), workers=2, on_record=spill)
        split = spill.summary()
    assert run.records == [] and spill.num_records == 200
    for key, value in one.items():  # rows in another order: means may differ in the last bit
        assert split[key] == pytest.approx(value, rel=1e-12), key


def test_blockers_name_what_couples_the_replicas():
    assert partition_blocker(SimConfig(num_replicas=2, router="round_robin")) is None
    assert "reads replica state" in partition_blocker(SimConfig(num_replicas=2))  # least_load
    assert "single replica" in partition_blocker(SimConfig(router="round_robin"))
    assert "migration" in partition_blocker(
        SimConfig(num_replicas=2, router="round_robin", migration={}))
    assert "follow-up" in partition_blocker(SimConfig(num_replicas=2, router="round_robin"),
                                            has_follow_ups=True)


def test_a_blocked_run_runs_in_this_process():
    config, specs = SimConfig(num_replicas=2), workload(60)  # least_load reads state
    assert by_request(simulate_parallel(config, lambda: iter(specs), workers=2).records) == \
        by_request(simulate(config, specs).records)


def test_a_worker_failure_is_raised_with_its_traceback():
    parent = os.getpid()
    specs = workload(40)

    def make_specs():
        for spec in specs:
            if os.getpid() != parent and spec.request_id == "r20":
                raise ValueError("bad row 21")
            yield spec

    with pytest.raises(RuntimeError, match="bad row 21"):
        simulate_parallel(SimConfig(num_replicas=2, router="round_robin"), make_specs, workers=2)


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        simulate_parallel(SimConfig(), lambda: [], workers=0)
