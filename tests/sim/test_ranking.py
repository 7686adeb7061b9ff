"""A router that declares `min_key` (least load) is routed by the simulator's index of replicas
in key order (`shunter.sim.ranking`) instead of reading every view at every arrival: at each
decision of runs that preempt, move requests, pipeline and hold priority headroom, it picks
the replica `least_loaded` picks from fresh views, and whole runs match the router reading
views, record for record."""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
from tests.factories import poisson_specs

from shunter.router.interface import min_key
from shunter.router.policies.least_load import LeastLoadRouter, least_loaded
from shunter.sim.config import SimConfig
from shunter.sim.runner import build_cluster, simulate
from shunter.sim.staleness import ViewSource

CONFIGS = {
    "3 replicas": SimConfig(num_replicas=3),
    "16 replicas": SimConfig(num_replicas=16),
    "memory pressure": SimConfig(num_replicas=2, num_blocks=300, scheduler={"max_model_len": 2048}),
    "migration, priority headroom": SimConfig(
        num_replicas=3, num_blocks=400,
        migration={"interval_s": 0.2, "out_threshold": 10, "in_threshold": 10,
                   "high_priority": 0, "priority_headroom_blocks": 20}),
    "two pipeline stages": SimConfig(num_replicas=2, pp=2),
}


def _specs(seed: int) -> list:
    return [dataclasses.replace(s, priority=i % 2)
            for i, s in enumerate(poisson_specs(600, seed=seed, rate=25.0))]


def test_least_load_declares_its_key():
    assert min_key(LeastLoadRouter()) is not None
    assert build_cluster(SimConfig(num_replicas=2))._min_index is not None
    # where the router would not read fresh views of one fixed set, no index
    for config in (SimConfig(num_replicas=2, router="round_robin"),
                   SimConfig(num_replicas=2, router_snapshot_interval_s=0.5),
                   SimConfig(num_replicas=1, autoscale={})):
        assert build_cluster(config)._min_index is None


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_pick_is_the_least_loaded_of_fresh_views(name, monkeypatch):
    dispatched = ViewSource.dispatched
    num_checked = [0]

    def checked(source: ViewSource, replica_id: int, spec) -> None:
        fresh = [r.view(source.with_speeds) for r in source.replicas]
        assert replica_id == least_loaded(fresh).replica_id
        num_checked[0] += 1
        dispatched(source, replica_id, spec)

    monkeypatch.setattr(ViewSource, "dispatched", checked)
    run = simulate(CONFIGS[name], _specs(seed=3))
    assert len(run.records) == 600 and num_checked[0] >= 600


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_runs_match_the_router_reading_views(name):
    specs = _specs(seed=4)
    indexed = simulate(CONFIGS[name], specs)
    with mock.patch.object(LeastLoadRouter, "min_key", None):  # undeclared: route() reads views
        assert build_cluster(CONFIGS[name])._min_index is None
        read = simulate(CONFIGS[name], specs)
    assert [dataclasses.astuple(r) for r in indexed.records] == \
        [dataclasses.astuple(r) for r in read.records]
