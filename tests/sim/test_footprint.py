"""The simulator's memory estimate, and the refusal of clusters this machine cannot hold
(`--replicas 20000` needed ~55 GB built, ~120 GB once prefix caches fill)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from tests.factories import make_spec

from shunter.errors import ConfigError
from shunter.sim import footprint
from shunter.sim.config import ReplicaGroup, SimConfig
from shunter.sim.footprint import (
    CACHED_BLOCK_BYTES,
    available_memory_bytes,
    check_memory,
    replica_bytes,
)
from shunter.sim.partition import simulate_parallel
from shunter.sim.runner import build_cluster, check_cluster_memory, cluster_memory_bytes, simulate
from shunter.sim.sweep import SweepGrid, make_tasks, run_tasks

GB = 10**9


@pytest.fixture
def small_machine(monkeypatch: pytest.MonkeyPatch) -> int:
    """This machine, as far as the simulator can tell, has 1 GB available."""
    monkeypatch.setattr(footprint, "available_memory_bytes", lambda: GB)
    return GB


@pytest.mark.parametrize("config", [
    SimConfig(num_replicas=3, num_blocks=3000, swap_space_gib=1.0),
    SimConfig(num_replicas=2, num_blocks=2000, scheduler={"enable_prefix_caching": False}),
    SimConfig(groups=({"gpu": "a100-80gb", "count": 2, "num_blocks": 1500},
                      {"gpu": "h100", "count": 1, "num_blocks": 2500})),
])
def test_the_estimate_covers_what_building_the_cluster_allocates(config):
    tracemalloc.start()
    try:
        cluster = build_cluster(config)
        for replica in cluster.replicas:  # a caching pool's queue once a hash is published
            if replica.scheduler.kv.pool.enable_caching:
                replica.scheduler.kv.pool._to_lru()
        built, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    estimate = cluster_memory_bytes(config)
    cached = CACHED_BLOCK_BYTES * sum(r.scheduler.kv.pool.num_blocks for r in cluster.replicas
                                      if r.scheduler.kv.pool.enable_caching)
    assert 0.85 * (estimate - cached) <= built <= estimate - cached  # measured, not guessed


def test_a_default_replica_is_about_what_the_red_team_measured():
    """Llama-3.1-8B on an A100-80GB: 28,056 KV blocks, 2.75 MB built, 6.1 MB with a full cache."""
    per_replica = cluster_memory_bytes(SimConfig()) / 1e6
    assert 6.0 < per_replica < 6.3
    assert replica_bytes(28_056, 2_048, prefix_caching=True) - 28_056 * CACHED_BLOCK_BYTES < 2.8e6


def test_available_memory_reads_meminfo_and_a_cgroup_limit(tmp_path: Path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683784 kB\nMemAvailable:    2000000 kB\n")
    assert available_memory_bytes(meminfo, tmp_path / "none") == 2_048_000_000
    (tmp_path / "memory.max").write_text("1000000000\n")
    (tmp_path / "memory.current").write_text("400000000\n")
    assert available_memory_bytes(meminfo, tmp_path) == 600_000_000  # the container's room
    (tmp_path / "memory.max").write_text("max\n")
    assert available_memory_bytes(meminfo, tmp_path) == 2_048_000_000
    assert available_memory_bytes(tmp_path / "absent", tmp_path / "none") is None


def test_this_machine_reports_its_memory():
    if not Path("/proc/meminfo").is_file():
        pytest.skip("no /proc/meminfo here")
    available = available_memory_bytes()
    assert available is not None and available > 0


def test_a_refusal_says_the_estimate_the_limit_and_how_to_proceed():
    with pytest.raises(ConfigError) as info:
        check_memory(123 * GB, "20000 replicas (6.1 MB each)", available_bytes=24 * GB)
    message = str(info.value)
    assert "20000 replicas (6.1 MB each) needs about 123.0 GB" in message
    assert "more than the 24.0 GB available" in message
    assert "fewer replicas (--replicas" in message and "num_blocks" in message
    check_memory(GB, "a few replicas", available_bytes=GB)  # fits exactly: no error


def test_too_many_replicas_are_refused_before_anything_is_built(small_machine):
    config = SimConfig(num_replicas=20_000)
    with pytest.raises(ConfigError, match=r"simulating 20000 replicas \(6\.1 MB each\) needs about "
                                          r"122\.9 GB of memory, more than the 1\.0 GB available"):
        simulate(config, [make_spec()])


def test_group_counts_are_counted(small_machine):
    config = SimConfig(groups=(ReplicaGroup(gpu="h100", count=100),
                               ReplicaGroup(gpu="a100-80gb", count=200)))
    with pytest.raises(ConfigError, match="300 replicas"):
        check_cluster_memory(config)


def test_a_cluster_that_fits_still_runs(small_machine):
    run = simulate(SimConfig(num_replicas=4, num_blocks=256), [make_spec(f"r{i}") for i in range(8)])
    assert len(run.records) == 8


def test_a_thousand_default_replicas_fit_in_a_few_gigabytes():
    config = SimConfig(num_replicas=1000)
    assert cluster_memory_bytes(config) < 6.5 * GB
    check_memory(cluster_memory_bytes(config), "1000 replicas", available_bytes=8 * GB)


@pytest.mark.slow
def test_a_thousand_replicas_really_run():
    """About 3 GB and 10 s: the estimate's 6.1 GB fits a machine with 8 GB free."""
    if (available_memory_bytes() or 0) < 8 * GB:
        pytest.skip("needs 8 GB of available memory")
    run = simulate(SimConfig(num_replicas=1000), [make_spec(f"r{i}") for i in range(50)])
    assert len(run.records) == 50


def test_worker_processes_each_build_the_whole_cluster(small_machine):
    config = SimConfig(num_replicas=100, router="round_robin")  # 0.6 GB: fits once, not 4 times
    assert cluster_memory_bytes(config, copies=4) > small_machine > cluster_memory_bytes(config)
    with pytest.raises(ConfigError, match="in each of 4 workers"):
        simulate_parallel(config, lambda: [make_spec()], workers=4)


def test_a_local_sweep_counts_the_points_that_run_at_once(small_machine):
    grid = SweepGrid(policies=("fcfs",), rates=(1.0, 2.0), replicas=(100, 200))
    tasks = make_tasks(grid, SimConfig(), "unused.csv")  # refused before any trace is read
    with pytest.raises(ConfigError, match="a sweep point of 200 replicas"):
        run_tasks(tasks, max_workers=1)
    with pytest.raises(ConfigError, match=r"2 sweep points at once \(--workers\) of up to 100"):
        run_tasks(tasks[:2], max_workers=2)  # 100 replicas fit once (0.6 GB), not twice
