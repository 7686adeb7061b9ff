"""Autoscaling in the simulator (`shunter.sim.autoscale`): cold starts, drains, cost, identity."""

import json
import re
import tomllib
from pathlib import Path

import pytest
from tests.factories import make_spec
from tests.sim.test_topology import assert_tokens_intact

from shunter.cli import main
from shunter.config import load_scenario
from shunter.errors import ConfigError
from shunter.router.autoscale import AutoscaleConfig
from shunter.sim.autoscale import DRAIN_CHECK_S, next_tick_s
from shunter.sim.config import SimConfig
from shunter.sim.partition import partition_blocker
from shunter.sim.runner import simulate


def events(run, kind: str) -> list:
    return [e for e in run.scale_events if e.kind == kind]


def burst(n: int, *, prompt: int = 700, out: int = 300, gap_s: float = 0.05) -> list:
    return [make_spec(f"b{i}", arrival_s=i * gap_s, num_prompt_tokens=prompt + 13 * (i % 7),
                      num_output_tokens=out + 11 * (i % 5)) for i in range(n)]


def test_a_new_replica_serves_only_after_its_provision_delay():
    specs = burst(80)
    config = SimConfig(num_replicas=1, num_blocks=300, router="least_load", autoscale={
        "max_replicas": 2, "interval_s": 0.5, "provision_s": 2.0, "drain": "wait"})
    run = simulate(config, specs)
    (up,), (ready,) = events(run, "up"), events(run, "ready")
    assert up.replica_id == ready.replica_id == 1 and up.time_s == 0.5  # the first tick
    assert ready.time_s == pytest.approx(up.time_s + 2.0)
    on_new = [r for r in run.records if r.replica_id == 1]
    assert on_new and run.num_routed[1] == len(on_new)
    assert min(r.arrival_s for r in on_new) >= ready.time_s  # routed there only once ready
    assert min(r.first_scheduled_s for r in on_new) >= ready.time_s
    assert_tokens_intact(run, specs)


def long_pair_then_trickle() -> list:
    """One long request for each of two replicas at t=0, then short ones from t=2 s."""
    return [make_spec("long0", arrival_s=0.0, num_prompt_tokens=520, num_output_tokens=3000),
            make_spec("long1", arrival_s=0.001, num_prompt_tokens=500, num_output_tokens=3000),
            *(make_spec(f"s{i}", arrival_s=2.0 + 0.5 * i, num_prompt_tokens=100,
                        num_output_tokens=20) for i in range(16))]


def drain_run(drain: str, *, snapshot_s: float = 0.0, migration: dict | None = None):
    specs = long_pair_then_trickle()
    # little KV in use: replica 1, the less loaded (a shorter prompt), drains at the first tick
    config = SimConfig(num_replicas=2, num_blocks=2000, router="round_robin",
                       router_snapshot_interval_s=snapshot_s, migration=migration,
                       autoscale={"max_replicas": 2, "interval_s": 1.0, "drain": drain,
                                  "scale_down_cooldown_s": 0.0})
    return specs, simulate(config, specs)


@pytest.mark.parametrize("snapshot_s", [0.0, 0.3])
def test_a_draining_replica_gets_no_new_request_and_goes_once_empty(snapshot_s):
    specs, run = drain_run("wait", snapshot_s=snapshot_s)
    (down,), (removed,) = events(run, "down"), events(run, "removed")
    assert down.replica_id == removed.replica_id == 1 and down.time_s == 1.0
    on_drained = [r for r in run.records if r.replica_id == 1]
    assert [r.request_id for r in on_drained] == ["long1"]  # it finished in place
    assert run.num_routed == [len(specs) - 1, 1]  # everything after the drain went to 0
    finish = on_drained[0].finish_s
    assert finish <= removed.time_s <= finish + DRAIN_CHECK_S + 1e-9
    assert_tokens_intact(run, specs)


def test_a_migrating_drain_moves_running_requests_and_loses_none():
    specs, waited = drain_run("wait")
    _, moved = drain_run("migrate")
    (removed,) = events(moved, "removed")
    assert moved.topology_stats["migrations_completed"] == 1
    assert [r.request_id for r in moved.records if r.request_id == "long1"] == ["long1"]
    assert all(r.replica_id == 0 for r in moved.records)  # long1 moved off replica 1
    assert_tokens_intact(moved, specs)  # every request finished exactly once, every token
    # gone within a few checks of the drain instead of after its long request
    assert removed.time_s < 1.5 < events(waited, "removed")[0].time_s
    assert (moved.topology_stats["replica_seconds"]
            < waited.topology_stats["replica_seconds"] - 10.0)


def test_a_migrating_drain_uses_the_clusters_migration_settings_when_given():
    specs, run = drain_run("migrate", migration={"interval_s": 0.2, "out_threshold": -1e9,
                                                 "in_threshold": 1e9})  # balancing never fires
    assert run.topology_stats["migrations_completed"] == 1
    removed_s = events(run, "removed")[0].time_s
    assert removed_s < 2.0 and round(removed_s / 0.2, 6).is_integer()  # the migrator's 0.2 s ticks
    assert_tokens_intact(run, specs)


def test_replica_seconds_integrate_the_provisioned_replicas_over_the_run():
    specs = [*burst(80), *(make_spec(f"t{i}", arrival_s=4.0 + 3.0 * i, num_prompt_tokens=300,
                                     num_output_tokens=40) for i in range(6))]
    config = SimConfig(num_replicas=1, num_blocks=300, autoscale={
        "max_replicas": 3, "interval_s": 0.5, "provision_s": 1.0, "drain": "wait",
        "scale_down_cooldown_s": 1.0})
    run = simulate(config, specs)
    end_s = max(r.finish_s for r in run.records)
    count, since, total = 1, 0.0, 0.0
    for e in run.scale_events:
        if e.kind in ("up", "removed") and e.time_s < end_s:
            total += count * (e.time_s - since)
            count, since = count + (1 if e.kind == "up" else -1), e.time_s
    total += count * (end_s - since)
    stats = run.topology_stats
    assert events(run, "up") and events(run, "removed")
    assert stats["replica_seconds"] == pytest.approx(total)
    assert stats["mean_replicas"] == pytest.approx(total / end_s)
    for e in events(run, "ready"):  # every replica: up, ready (, down, removed) in order
        kinds = [x.kind for x in run.scale_events if x.replica_id == e.replica_id]
        assert kinds in (["up", "ready"], ["up", "ready", "down", "removed"])


def test_an_autoscaler_that_never_acts_changes_nothing():
    specs = burst(60)
    plain = simulate(SimConfig(num_replicas=2, num_blocks=300), specs)
    still = simulate(SimConfig(num_replicas=2, num_blocks=300, autoscale={
        "min_replicas": 2, "max_replicas": 2, "interval_s": 0.1}), specs)
    assert not still.scale_events and plain.topology_stats == {}
    key = lambda run: [(r.request_id, r.replica_id, r.finish_s, tuple(r.token_times_s))  # noqa: E731
                       for r in run.records]
    assert key(plain) == key(still) and plain.num_routed == still.num_routed
    assert still.topology_stats["mean_replicas"] == 2.0


def test_same_trace_same_scale_events():
    runs = [simulate(SimConfig(num_replicas=1, num_blocks=300, autoscale={
        "max_replicas": 3, "interval_s": 0.5, "provision_s": 1.0}), burst(80)) for _ in range(2)]
    assert runs[0].scale_events == runs[1].scale_events and runs[0].scale_events


def test_next_tick_is_the_first_multiple_after_now():
    assert next_tick_s(0.0, 10.0) == 10.0 and next_tick_s(10.0, 10.0) == 20.0
    assert next_tick_s(0.3, 0.1) > 0.3


# ---- selection: scenario files, SimConfig, the CLI -------------------------------------------

def test_an_autoscale_table_in_a_scenario_turns_it_on(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[cluster]\nreplicas = 2\n[autoscale]\nmax_replicas = 6\nprovision_s = 60\n'
                    'drain = "wait"\n')
    config = load_scenario(path).sim.autoscale_config
    assert config == AutoscaleConfig(max_replicas=6, provision_s=60, drain="wait")
    assert partition_blocker(load_scenario(path).sim) == "autoscaling adds and drains replicas"


@pytest.mark.parametrize(("table", "message"), [
    ("max_replicas = 1\nmin_replicas = 2", r"s.toml: \[autoscale\]: max_replicas \(1\) must be"),
    ("provision = 3", r"s.toml: \[autoscale\]: unknown key 'provision'"),
    ("provision_s = -3", r"s.toml: \[autoscale\]: provision_s must be >= 0"),
    ("max_replicas = 1", r"starting replicas \(2\) must lie within"),
])
def test_bad_autoscale_tables_are_config_errors_naming_file_and_key(tmp_path, table, message):
    path = tmp_path / "s.toml"
    path.write_text(f"[cluster]\nreplicas = 2\n[autoscale]\n{table}\n")
    with pytest.raises(ConfigError, match=message):
        load_scenario(path)


def test_autoscaling_is_refused_where_it_is_not_modelled():
    with pytest.raises(ValueError, match="one pool of identical replicas"):
        SimConfig(num_replicas=2, disaggregation=True, autoscale={})
    with pytest.raises(ValueError, match="one pool of identical replicas"):
        SimConfig(num_replicas=2, gateway_policy="fcfs", autoscale={})


def test_simulate_flags_print_the_scale_events_and_cost(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["simulate", "--num-requests", "300", "--rate", "40", "--replicas", "1", "--quiet",
            "--json", str(out), "--autoscale-params",
            '{"max_replicas": 3, "interval_s": 1, "provision_s": 2, "scale_up_load": 0.1, '
            '"scale_down_load": 0.02}']
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "autoscaling: " in printed and "replica-seconds" in printed
    assert "scale events" in printed and "ready 1" in printed
    result = json.loads(out.read_text())["autoscale"]
    assert result["max_replicas"] == 3 and result["events"][:2] == [[2.0, "up", 1],
                                                                    [4.0, "ready", 1]]
    assert main([*args[:-2], "--autoscale", "--json", str(out)]) == 0  # defaults: on
    assert json.loads(out.read_text())["autoscale"]["max_replicas"] == 16


def test_bad_autoscale_flags_are_errors_before_any_run(tmp_path, capsys):
    out = tmp_path / "r.json"
    base = ["simulate", "--num-requests", "50", "--quiet", "--json", str(out)]
    assert main([*base, "--autoscale-params", '{"drain": "evict"}']) == 2
    assert "--autoscale-params: drain must be one of migrate, wait" in capsys.readouterr().err
    assert main([*base, "--no-autoscale", "--autoscale-params", "{}"]) == 2
    assert main([*base, "--replicas", "5", "--autoscale-params", '{"max_replicas": 4}']) == 2
    assert "starting replicas (5) must lie within" in capsys.readouterr().err
    assert not out.exists()


def test_the_readme_autoscale_table_loads_and_shows_the_defaults():
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```toml\n(\[autoscale\].*?)```", text, re.S)
    assert block is not None
    table = tomllib.loads(block.group(1))["autoscale"]
    assert AutoscaleConfig.from_table(table, "README [autoscale]") == AutoscaleConfig()


@pytest.mark.parametrize("drain", ["wait", "migrate"])
def test_bulk_decode_runs_give_the_step_by_step_records_and_events(drain):
    # three long requests on each of three replicas, two of which drain at once
    specs = [*(make_spec(f"long{i}", arrival_s=0.01 * i, num_prompt_tokens=300 + 40 * i,
                         num_output_tokens=1200 + 150 * i) for i in range(9)),
             *(make_spec(f"s{i}", arrival_s=1.5 + 0.4 * i, num_prompt_tokens=200,
                         num_output_tokens=30) for i in range(10))]
    runs = [simulate(SimConfig(num_replicas=3, num_blocks=2000, router="round_robin",
                               fast_forward=fast, autoscale={
                                   "max_replicas": 3, "interval_s": 1.0, "drain": drain,
                                   "scale_down_cooldown_s": 0.0}), specs)
            for fast in (False, True)]
    key = lambda run: sorted((r.request_id, r.replica_id, tuple(r.token_times_s))  # noqa: E731
                             for r in run.records)
    assert key(runs[0]) == key(runs[1]) and runs[0].scale_events == runs[1].scale_events
    assert len(events(runs[0], "removed")) == 2
    # the drained replicas' six requests move, some twice (onto a replica that drains later)
    moved = runs[0].topology_stats.get("migrations_completed", 0)
    assert moved >= 6 if drain == "migrate" else moved == 0
    assert_tokens_intact(runs[1], specs)
