"""Sweeps: grid expansion, curves, the same rows from one worker, processes and Ray, and the CLI."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
from pathlib import Path

import pytest

from shunter.cli.sweep import add_sweep_parser
from shunter.errors import ConfigError
from shunter.sim.config import SimConfig
from shunter.sim.sweep import SweepGrid, capacity, curves, flatten, make_tasks, run_point, run_tasks

HAS_RAY = importlib.util.find_spec("ray") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture
def trace(tmp_path: Path) -> str:
    """A 40-request Mooncake-style trace (its own times are replaced by each point's rate)."""
    rng = random.Random(7)
    path = tmp_path / "trace.jsonl"
    with open(path, "w") as f:
        for i in range(40):
            row = {"timestamp": i * 100, "input_length": rng.choice([30, 200, 900]),
                   "output_length": rng.choice([1, 8, 60])}
            f.write(json.dumps(row) + "\n")
    return str(path)


def small_grid() -> SweepGrid:
    return SweepGrid(policies=("fcfs", "priority"), rates=(2.0, 8.0), seeds=(0, 1), replicas=(1, 2))


def test_grid_expands_every_combination_in_order(trace):
    grid = small_grid()
    tasks = make_tasks(grid, SimConfig(router="round_robin"), trace)
    assert grid.num_points == len(tasks) == 16
    assert [t.point.index for t in tasks] == list(range(16))
    first, second, last = tasks[0].point, tasks[1].point, tasks[-1].point
    assert (first.policy, first.num_replicas, first.rate, first.seed) == ("fcfs", 1, 2.0, 0)
    assert (second.policy, second.num_replicas, second.rate, second.seed) == ("fcfs", 1, 2.0, 1)
    assert (last.policy, last.num_replicas, last.rate, last.seed) == ("priority", 2, 8.0, 1)
    assert tasks[-1].sim.policy == "priority" and tasks[-1].sim.num_replicas == 2
    assert tasks[-1].sim.router == "round_robin"  # the base config's other fields are kept


@pytest.mark.parametrize("kwargs, message", [
    ({"policies": (), "rates": (1.0,)}, "at least one value in policies"),
    ({"policies": ("fcfs",), "rates": (1.0, 1.0)}, "repeated"),
    ({"policies": ("fcfs",), "rates": (0.0,)}, "rates must be > 0"),
    ({"policies": ("fcfs",), "rates": (1.0,), "replicas": (0,)}, "replicas must be >= 1"),
])
def test_bad_grids_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SweepGrid(**kwargs)


def test_flatten_joins_nested_keys():
    assert flatten({"a": 1, "ttft_s": {"p99": 2.5, "mean": None}, "l": [1]}) == {
        "a": 1, "ttft_s.p99": 2.5, "ttft_s.mean": None, "l": [1]}


def test_curves_average_seeds_and_capacity_reads_the_knee():
    rows = [{"policy": "fcfs", "replicas": 1, "rate": rate, "seed": seed, "m": value}
            for rate, seed, value in [(4.0, 0, 3.0), (1.0, 0, 1.0), (1.0, 1, 3.0),
                                      (2.0, 0, 2.0), (2.0, 1, None)]]
    lines = curves(rows, "m")
    assert lines == {("fcfs", 1): [(1.0, 2.0, 1.0, 3.0), (2.0, 2.0, 2.0, 2.0), (4.0, 3.0, 3.0, 3.0)]}
    assert capacity(lines[("fcfs", 1)], 2.5) == 2.0
    assert capacity(lines[("fcfs", 1)], 0.5) is None
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        curves(rows, "nope")


def test_a_point_is_its_own_seeded_simulation(trace):
    task = make_tasks(SweepGrid(policies=("fcfs",), rates=(4.0,)), SimConfig(), trace)[0]
    row = run_point(task)
    assert row["num_requests"] == 40 and row["num_completed"] == 40
    assert (row["policy"], row["rate"], row["seed"], row["replicas"]) == ("fcfs", 4.0, 0, 1)
    again = run_point(task)
    assert {k: v for k, v in row.items() if k != "wall_s"} == {
        k: v for k, v in again.items() if k != "wall_s"}


def _without_wall(rows):
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


def test_processes_give_the_rows_one_worker_gives(trace):
    grid = SweepGrid(policies=("fcfs", "priority"), rates=(2.0, 16.0), seeds=(0, 1))
    tasks = make_tasks(grid, SimConfig(), trace, num_requests=25)
    seen = []
    inline = run_tasks(tasks, max_workers=1)
    parallel = run_tasks(tasks, max_workers=2, on_result=lambda row: seen.append(row["index"]))
    assert _without_wall(parallel) == _without_wall(inline)
    assert [row["index"] for row in parallel] == list(range(8))
    assert sorted(seen) == list(range(8))
    # load shows in the curve: the higher rate queues more (the test can fail)
    e2e = curves(inline, "e2e_s.mean")[("fcfs", 1)]
    assert e2e[1][1] > e2e[0][1]
    # seeds differ: different arrivals, different latencies
    assert inline[0]["e2e_s.mean"] != inline[1]["e2e_s.mean"]


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shunter")
    add_sweep_parser(parser.add_subparsers())
    args = parser.parse_args(["sweep", *argv])
    return args.handler(args)


def test_cli_writes_one_row_per_point(trace, tmp_path, capsys):
    out_json, out_csv = tmp_path / "rows.json", tmp_path / "rows.csv"
    rc = _cli(["--trace", trace, "--policy", "fcfs,priority", "--rate", "1,4", "--replicas", "1",
               "--workers", "2", "--metric", "e2e_s.p50", "--limit", "100", "--quiet",
               "--json", str(out_json), "--csv", str(out_csv)])
    assert rc == 0
    rows = json.loads(out_json.read_text())
    assert [(r["policy"], r["rate"]) for r in rows] == [
        ("fcfs", 1.0), ("fcfs", 4.0), ("priority", 1.0), ("priority", 4.0)]
    with open(out_csv, newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    printed = capsys.readouterr().out
    assert "e2e_s.p50 against rate" in printed and "capacity" in printed


def test_cli_models_a_gateway_tier(trace, tmp_path):
    def mean_queue(*extra: str) -> float:
        out = tmp_path / "rows.json"
        assert _cli(["--trace", trace, "--rate", "8", "--replicas", "1", "--workers", "1",
                     "--quiet", "--json", str(out), *extra]) == 0
        return json.loads(out.read_text())[0]["queue_s.mean"]
    # one request at a time through the gateway queues what the engine would have batched
    assert mean_queue("--gateway-policy", "fcfs", "--gateway-max-inflight", "1") > \
        mean_queue() + 0.1


@pytest.mark.parametrize("argv, message", [
    (["--rate", "1", "--gateway-policy", "sarathi"], "cannot order the gateway"),
    (["--policy", "nope", "--rate", "1"], "unknown policy 'nope'"),
    (["--rate", "1", "--router", "nope"], "unknown router 'nope'"),
    (["--rate", "1", "--workers", "0"], "--workers must be >= 1"),
    (["--rate", "1,1"], "repeated"),
])
def test_cli_rejects_bad_flags_before_running(trace, argv, message):
    with pytest.raises(ConfigError, match=message):
        _cli(["--trace", trace, *argv])


def test_cli_rejects_an_unknown_metric(trace):
    with pytest.raises(ValueError, match="unknown metric"):
        _cli(["--trace", trace, "--rate", "2", "--num-requests", "5", "--workers", "1",
              "--metric", "nope", "--quiet"])


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib (shunter[plot]) not installed")
def test_cli_plots_the_curves(trace, tmp_path):
    plot = tmp_path / "curve.png"
    assert _cli(["--trace", trace, "--policy", "fcfs,priority", "--rate", "1,4", "--seed", "0,1",
                 "--workers", "1", "--quiet", "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="ray (shunter[ray]) not installed")
def test_ray_gives_the_rows_local_processes_give(trace):
    import ray  # the optional extra under test

    grid = SweepGrid(policies=("fcfs", "priority"), rates=(2.0, 16.0), seeds=(0,))
    tasks = make_tasks(grid, SimConfig(), trace, num_requests=25)
    local = run_tasks(tasks, max_workers=1)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        on_ray = run_tasks(tasks, ray_address=address)
    finally:
        ray.shutdown()
    assert _without_wall(on_ray) == _without_wall(local)
