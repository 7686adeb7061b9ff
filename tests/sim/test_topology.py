"""Cluster topologies: live migration, prefill/decode pools, heterogeneous replicas, staleness."""

from array import array

import numpy as np
import pytest
from tests.factories import make_spec

from shunter.config import load_scenario
from shunter.core.types import FinishReason
from shunter.errors import ConfigError
from shunter.sim.config import SimConfig
from shunter.sim.handoff import SplicedTokenTimes
from shunter.sim.runner import build_cluster, simulate
from shunter.sim.timeline import StepTimeline, TokenTimes


def burst(n: int, *, prompt: int = 400, out: int = 200, gap_s: float = 0.01) -> list:
    return [make_spec(f"r{i}", arrival_s=i * gap_s, num_prompt_tokens=prompt + 13 * (i % 7),
                      num_output_tokens=out + 11 * (i % 5)) for i in range(n)]


def assert_tokens_intact(run, specs) -> None:
    """Every request got exactly its true output length, at strictly increasing times."""
    by_id = {s.request_id: s for s in specs}
    assert sorted(r.request_id for r in run.records) == sorted(by_id)
    for record in run.records:
        times = np.asarray(record.token_times_s)
        assert record.finish_reason == FinishReason.STOP
        assert len(times) == by_id[record.request_id].num_output_tokens
        assert np.all(np.diff(times) > 0), record.request_id
        assert record.finish_s == times[-1]


def test_spliced_token_times_read_like_one_list():
    timeline = StepTimeline()
    timeline.extend([5.0, 6.0, 7.0])
    tail = TokenTimes(timeline)
    spliced = SplicedTokenTimes(array("d", [1.0, 2.0]), tail)
    spliced.add(1, 3)
    assert spliced == [1.0, 2.0, 6.0, 7.0] and len(spliced) == 4
    assert spliced[2] == 6.0 and spliced[-1] == 7.0 and spliced[1:3] == [2.0, 6.0]
    assert np.asarray(spliced).tolist() == [1.0, 2.0, 6.0, 7.0]
    assert spliced.first_step == 1


def test_migration_moves_running_requests_without_losing_or_repeating_a_token():
    # round robin sends every long request to replica 0, short ones elsewhere: Llumnix moves
    # load off the full replica onto the ones that emptied
    specs = [make_spec(f"r{i}", arrival_s=i * 0.01, num_prompt_tokens=400 + 13 * (i % 7),
                       num_output_tokens=300 + i if i % 4 == 0 else 10) for i in range(32)]
    config = SimConfig(num_replicas=4, num_blocks=300, router="round_robin",
                       migration={"out_threshold": 20.0, "in_threshold": 40.0})
    run = simulate(config, specs)
    stats = run.topology_stats
    assert stats["migrations_completed"] >= 1
    assert stats["migrations_started"] == (stats["migrations_completed"] + stats["migrations_aborted"]
                                           + stats["migrations_requeued"])
    assert_tokens_intact(run, specs)
    moved = [r for r in run.records if isinstance(r.token_times_s, SplicedTokenTimes)]
    assert moved and all(r.replica_id is not None for r in moved)
    # the downtime (last copy plus waiting for the destination's step) is a few steps at most
    assert 0 < stats["migration_downtime_max_s"] < 0.5


def test_a_migration_whose_destination_fills_mid_copy_is_abandoned_not_recomputed(monkeypatch):
    """Llumnix's handshake: each stage needs the destination to take the blocks; one that
    filled up since the migration began (here with `filler`, over a slow link) makes the
    migration stop and the request go on at the source, never recomputed elsewhere."""
    from shunter.sim import migration

    def run():
        specs = [make_spec("long", arrival_s=0.0, num_prompt_tokens=1200, num_output_tokens=400),
                 make_spec("tiny", arrival_s=0.001, num_prompt_tokens=16, num_output_tokens=1),
                 make_spec("tiny2", arrival_s=0.3, num_prompt_tokens=16, num_output_tokens=1),
                 make_spec("filler", arrival_s=0.301, num_prompt_tokens=1500,
                           num_output_tokens=200)]
        config = SimConfig(num_replicas=2, num_blocks=110, router="round_robin",
                           kv_link_bytes_s=2e8, migration={"interval_s": 0.05,
                                                           "out_threshold": 60.0,
                                                           "in_threshold": 80.0})
        result = simulate(config, specs)
        assert_tokens_intact(result, specs)
        return result.topology_stats, sum(r.num_preemptions for r in result.records)

    stats, preemptions = run()
    assert stats["migrations_aborted"] >= 1 and stats["migrations_requeued"] == 0
    assert preemptions == 0
    # without the check the same run recomputes the request at the destination
    monkeypatch.setattr(migration.Migrator, "_dst_fits", staticmethod(lambda m: True))
    stats, preemptions = run()
    assert stats["migrations_requeued"] >= 1 and preemptions >= 1


def test_migration_off_by_default_and_results_unchanged_by_an_idle_migrator():
    specs = burst(6, gap_s=1.0, out=20)
    plain = simulate(SimConfig(num_replicas=2), specs)
    with_migration = simulate(SimConfig(num_replicas=2, migration={}), specs)
    assert plain.topology_stats == {}
    assert with_migration.topology_stats["migrations_started"] == 0
    assert [tuple(r.token_times_s) for r in plain.records] == \
        [tuple(r.token_times_s) for r in with_migration.records]


def test_disaggregation_prefills_on_the_prefill_pool_and_decodes_on_the_decode_pool():
    specs = burst(12, out=30)
    config = SimConfig(num_replicas=3, num_prefill_replicas=1, disaggregation=True,
                       kv_link_bytes_s=5e9, record_steps=True)
    run = simulate(config, specs)
    assert_tokens_intact(run, specs)
    assert run.num_routed[0] == 12 and run.num_routed[1:] == [0, 0]  # all prefill on replica 0
    assert {r.replica_id for r in run.records} <= {1, 2}  # every request finished decoding there
    prefill_ends = {end for replica, _, end, *_ in run.step_log if replica == 0}
    assert all(r.token_times_s[0] in prefill_ends for r in run.records)  # TTFT at the prefill
    assert run.topology_stats["pd_handoffs"] == 12
    # the second token waits for the KV transfer: llama-3.1-8b KV is 128 KiB a token
    transfer_s = 400 * 131072 / 5e9
    assert all(r.token_times_s[1] - r.token_times_s[0] >= transfer_s for r in run.records)


def test_conditional_disaggregation_skips_the_prefill_pool_for_cached_prompts():
    shared = tuple(range(8))  # the same 8 x 512-token prefix for every request
    specs = [make_spec(f"r{i}", arrival_s=i * 2.0, num_prompt_tokens=4200, num_output_tokens=8,
                       hash_ids=shared, hash_block_size=512) for i in range(4)]
    config = SimConfig(num_replicas=2, disaggregation=True, skip_prefill_cached_fraction=0.8)
    run = simulate(config, specs)
    assert_tokens_intact(run, specs)
    # the first request's KV lands on the decode replica; the rest hit it there
    assert run.topology_stats["pd_handoffs"] == 1
    assert run.topology_stats["pd_prefilled_on_decode"] == 3
    assert all(r.num_cached_tokens >= 4096 for r in run.records[1:])


def test_heterogeneous_groups_get_their_own_cost_model_and_kv_capacity():
    config = SimConfig(groups=({"gpu": "h100", "count": 1},
                               {"gpu": "a100-40gb", "count": 2, "model": "llama-3.1-8b"}),
                       router="cost")
    cluster = build_cluster(config)
    h100, a100 = cluster.replicas[0], cluster.replicas[1]
    assert h100.view().num_total_blocks > a100.view().num_total_blocks
    assert h100.view().prefill_tokens_per_s > 2 * a100.view().prefill_tokens_per_s
    run = simulate(config, burst(60, gap_s=0.05, out=50))
    assert run.num_routed[0] > max(run.num_routed[1:])  # the faster replica takes more


def test_a_stale_router_herds_without_in_flight_accounting():
    specs = burst(30, gap_s=0.01, out=20)
    fresh = simulate(SimConfig(num_replicas=3), specs)
    herd = simulate(SimConfig(num_replicas=3, router_snapshot_interval_s=10.0,
                              router_counts_in_flight=False), specs)
    counted = simulate(SimConfig(num_replicas=3, router_snapshot_interval_s=10.0), specs)
    assert herd.num_routed == [30, 0, 0]  # every request sees the same idle snapshot
    assert max(counted.num_routed) - min(counted.num_routed) <= 1
    assert max(fresh.num_routed) - min(fresh.num_routed) <= 2


def test_topology_config_errors():
    with pytest.raises(ValueError, match="prefill"):
        SimConfig(num_replicas=1, disaggregation=True)
    with pytest.raises(ValueError, match="role"):
        SimConfig(groups=({"gpu": "h100", "role": "prefill"},))
    with pytest.raises(ValueError, match="both pools"):
        SimConfig(disaggregation=True, groups=({"gpu": "h100", "role": "prefill"},))
    with pytest.raises(ValueError, match="unknown replica group keys"):
        SimConfig(groups=({"gpu": "h100", "gpus": 2},))
    with pytest.raises(ValueError, match="unknown migration keys"):
        SimConfig(migration={"every": 1})
    with pytest.raises(ValueError, match="skip_prefill_cached_fraction"):
        SimConfig(skip_prefill_cached_fraction=1.5)
    with pytest.raises(ValueError, match="router_snapshot_interval_s"):
        SimConfig(router_snapshot_interval_s=-1)


SCENARIO_TOML = """
[cluster]
router = "cost"
disaggregation = true
decode_router = "least_load"
skip_prefill_cached_fraction = 0.7
kv_link_bytes_s = 50e9
router_snapshot_interval_s = 0.05
migration = { interval_s = 0.2, out_threshold = 8.0 }

[[cluster.groups]]
gpu = "h100"
count = 2
role = "prefill"

[[cluster.groups]]
gpu = "a100-80gb"
count = 3
role = "decode"
"""


def test_every_topology_is_selectable_from_a_scenario_file(tmp_path):
    path = tmp_path / "pd.toml"
    path.write_text(SCENARIO_TOML)
    sim = load_scenario(path).sim
    assert [(g.gpu, g.count, g.role) for g in sim.groups] == [("h100", 2, "prefill"),
                                                               ("a100-80gb", 3, "decode")]
    assert sim.disaggregation and sim.decode_router == "least_load"
    assert sim.migration_config().interval_s == 0.2 and sim.router_snapshot_interval_s == 0.05
    run = simulate(sim, burst(10, out=20))
    assert sum(run.num_routed[:2]) + run.topology_stats["pd_prefilled_on_decode"] == 10


def test_bad_topology_keys_in_a_scenario_are_config_errors(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[cluster]\ngroups = [{ gpu = "h100", cnt = 2 }]\n')
    with pytest.raises(ConfigError, match="unknown replica group keys"):
        load_scenario(path)
    path.write_text('[cluster]\ngroups = "h100"\n')
    with pytest.raises(ConfigError, match="groups must be a list"):
        load_scenario(path)


def test_priority_headroom_shows_in_the_views_the_router_reads():
    specs = [make_spec("high", num_prompt_tokens=100, num_output_tokens=50, priority=0),
             make_spec("low", num_prompt_tokens=100, num_output_tokens=50, priority=1)]
    config = SimConfig(num_replicas=2, num_blocks=1000, router="round_robin",
                       migration={"high_priority": 0, "priority_headroom_blocks": 300})
    cluster = build_cluster(config)
    for replica, spec in zip(cluster.replicas, specs, strict=True):
        replica.add(spec)
        replica.start_step()
    high, low = (r.view() for r in cluster.replicas)
    assert low.num_free_blocks - high.num_free_blocks == 300
