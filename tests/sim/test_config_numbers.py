"""SimConfig, ReplicaGroup and MigrationConfig refuse NaN, infinities and untyped group values
with an error naming the field (a NaN kv_link_bytes_s used to crash a disaggregated run)."""

from __future__ import annotations

import math

import pytest
from tests.factories import make_spec

from shunter.sim.config import MigrationConfig, ReplicaGroup, SimConfig
from shunter.sim.runner import simulate
from shunter.sim.sweep import SweepGrid

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("field, value", [
    ("kv_link_bytes_s", NAN), ("kv_link_bytes_s", INF),
    ("router_snapshot_interval_s", NAN), ("router_snapshot_interval_s", INF),
    ("swap_space_gib", NAN), ("swap_space_gib", INF),
    ("skip_prefill_cached_fraction", NAN),
])
def test_sim_config_floats_refuse_nan_and_infinities(field, value):
    with pytest.raises(ValueError, match=f"{field} must be .*got {value}"):
        SimConfig(**{field: value})


def test_a_nan_kv_link_is_refused_before_a_disaggregated_run():
    with pytest.raises(ValueError, match="kv_link_bytes_s must be > 0 and finite, got nan"):
        config = SimConfig(num_replicas=2, disaggregation=True, num_blocks=64,
                           kv_link_bytes_s=NAN)
        simulate(config, [make_spec("r0", num_prompt_tokens=40, num_output_tokens=4)])


@pytest.mark.parametrize("key, value", [
    ("interval_s", NAN), ("interval_s", INF), ("out_threshold", NAN), ("in_threshold", INF),
    ("max_stages", NAN), ("last_stage_max_blocks", INF), ("priority_headroom_blocks", NAN),
    ("high_priority", NAN),
])
def test_migration_numbers_refuse_nan_and_infinities(key, value):
    with pytest.raises(ValueError, match=f"migration {key} must be .*got {value}"):
        MigrationConfig.from_dict({key: value})
    with pytest.raises(ValueError, match=f"migration {key}"):
        SimConfig(num_replicas=2, migration={key: value})


@pytest.mark.parametrize("key, value, what", [
    ("count", NAN, "a whole number"), ("count", "3", "a whole number"),
    ("count", 2.0, "a whole number"), ("tp", INF, "a whole number"),
    ("num_blocks", 1e9, "a whole number"), ("count", True, "a whole number"),
    ("gpu", 80, "a string"), ("model", ["x"], "a string"),
])
def test_replica_group_values_must_have_their_type(key, value, what):
    with pytest.raises(ValueError, match=f"replica group's {key} must be {what}"):
        ReplicaGroup.from_dict({"gpu": "h100", key: value})


@pytest.mark.parametrize("rate", [NAN, INF])
def test_sweep_rates_refuse_nan_and_infinities(rate):
    with pytest.raises(ValueError, match=f"rates must be > 0 and finite, got {rate}"):
        SweepGrid(policies=("fcfs",), rates=(1.0, rate))
