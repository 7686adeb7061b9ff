"""Streamed runs: the same latencies as a run that keeps its records, in bounded memory."""

from __future__ import annotations

import pytest
from tests.factories import poisson_specs

from shunter.core.types import RequestSpec
from shunter.metrics.summary import summarize
from shunter.sim import cluster as cluster_module
from shunter.sim import stream as stream_module
from shunter.sim.config import SimConfig
from shunter.sim.runner import build_cluster, simulate
from shunter.sim.stream import RecordSpill


def workload(n: int, seed: int = 3, rate: float = 8.0) -> list[RequestSpec]:
    return poisson_specs(n, seed=seed, rate=rate)


CONFIGS = {
    "default": SimConfig(num_replicas=2),
    "prefill-first-no-cache": SimConfig(num_replicas=3, router="round_robin", scheduler={
        "enable_chunked_prefill": False, "enable_prefix_caching": False}),
    "memory-pressure": SimConfig(num_blocks=400, scheduler={"max_model_len": 8192}),
}


@pytest.mark.parametrize("summary_rows", [7, None])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_streamed_summary_equals_the_kept_records(name, summary_rows, monkeypatch):
    monkeypatch.setattr(cluster_module, "TRIM_EVERY_RECORDS", 16)  # trim often
    if summary_rows is not None:  # the summary reads its columns in chunks of this many rows
        monkeypatch.setattr(stream_module, "_SUMMARY_ROWS", summary_rows)
    specs = workload(120)
    kept = summarize(simulate(CONFIGS[name], specs).records).to_dict()
    with RecordSpill() as spill:
        run = simulate(CONFIGS[name], iter(specs), on_record=spill)
        streamed = spill.summary()
    assert run.records == [] and spill.num_records == 120
    assert streamed["num_completed"] == kept["num_completed"]
    assert streamed["num_output_tokens"] == kept["num_output_tokens"]
    for metric in ("ttft_s", "tpot_s", "e2e_s", "queue_s"):
        for stat, value in kept[metric].items():
            assert streamed[metric][stat] == pytest.approx(value, rel=1e-12), (metric, stat)


def test_streamed_runs_forget_old_steps(monkeypatch):
    monkeypatch.setattr(cluster_module, "TRIM_EVERY_RECORDS", 8)
    cluster = build_cluster(SimConfig(num_replicas=1))
    timeline = cluster.replicas[0]._timeline
    kept = []
    cluster.run(workload(150, rate=2.0), on_record=lambda r: kept.append(len(timeline.times_s)))
    assert len(kept) == 150 and len(timeline) > 1000
    assert max(kept) < len(timeline) / 4  # old step times were dropped as the run went
    cluster.replicas[0].trim_timeline()
    assert len(timeline.times_s) == 0  # nothing live: nothing kept
