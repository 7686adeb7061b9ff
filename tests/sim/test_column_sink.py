"""Runs that keep columns of their records, not the records (`ColumnSink`, what `simulate`
does from 20,000 requests on): the whole summary equal to the kept records' to the bit."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from tests.factories import poisson_specs

from shunter.cli import main
from shunter.cli import simulate as simulate_cli
from shunter.core.types import RequestSpec
from shunter.metrics.columns import concat_columns, to_columns
from shunter.metrics.stats import LatencyStats
from shunter.metrics.summary import summarize
from shunter.sim import cluster as cluster_module
from shunter.sim.config import SimConfig
from shunter.sim.partition import simulate_parallel
from shunter.sim.runner import simulate
from shunter.sim.stream import ColumnSink


def workload(n: int, *, tenants: str = "a", seed: int = 3) -> list[RequestSpec]:
    specs = poisson_specs(n, seed=seed, rate=8.0)
    return [dataclasses.replace(s, tenant=tenants[i % len(tenants)], ttft_slo_s=0.5 + i % 3)
            for i, s in enumerate(specs)]


CONFIGS = {
    "default": SimConfig(num_replicas=2),
    "memory pressure, rejections": SimConfig(num_blocks=400, scheduler={"max_model_len": 2048}),
    "round robin, prefill-first": SimConfig(num_replicas=3, router="round_robin", scheduler={
        "enable_chunked_prefill": False, "enable_prefix_caching": False}),
    # requests that move (their token times spliced, not ranges of one timeline), steps that
    # give a request several tokens, and pipelined batches
    "llumnix migration": SimConfig(num_replicas=3, router="llumnix", num_blocks=400, migration={
        "interval_s": 0.2, "out_threshold": 10, "in_threshold": 10}),  # ~20 requests move
    "speculative decoding": SimConfig(num_replicas=2, speculative={
        "method": "ngram", "num_speculative_tokens": 3, "acceptance_rate": 0.6, "seed": 1}),
    "two pipeline stages": SimConfig(num_replicas=2, pp=2),
}


@pytest.mark.parametrize("tenants", ["a", "abc"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_sinks_summary_equals_the_kept_records_to_the_bit(name, tenants, monkeypatch):
    monkeypatch.setattr(cluster_module, "TRIM_EVERY_RECORDS", 16)  # token times trimmed often
    specs = workload(150, tenants=tenants)
    kept = summarize(simulate(CONFIGS[name], specs).records, tpot_slo_s=0.05).to_dict()
    sink = ColumnSink(keep_token_times=len(tenants) > 1, chunk_records=7)
    run = simulate(CONFIGS[name], iter(specs), on_record=sink)
    assert run.records == [] and sink.num_records == 150
    assert sink.summary(tpot_slo_s=0.05).to_dict() == kept
    if name.startswith("memory"):
        assert kept["num_rejected"] > 0


def test_a_split_runs_sink_equals_its_kept_records():
    config = CONFIGS["round robin, prefill-first"]
    specs = workload(200, tenants="ab")
    kept = summarize(simulate_parallel(config, lambda: specs, workers=2).records).to_dict()
    sink = ColumnSink(keep_token_times=True)
    run = simulate_parallel(config, lambda: specs, workers=2, on_record=sink)
    assert run.records == [] and sink.num_records == 200
    assert sink.summary().to_dict() == kept


def test_two_tenants_without_token_times_are_refused_not_guessed():
    sink = ColumnSink(keep_token_times=False)
    simulate(CONFIGS["default"], workload(40, tenants="ab"), on_record=sink)
    with pytest.raises(ValueError, match="service gap"):
        sink.summary()


def test_joined_columns_equal_the_columns_of_the_joined_records():
    records = simulate(CONFIGS["memory pressure, rejections"], workload(90, tenants="xyz")).records
    whole = to_columns(records)
    joined = concat_columns([to_columns(records[:31]), to_columns(records[31:])],
                            keep_token_times=True)
    for field in dataclasses.fields(whole):
        a, b = getattr(whole, field.name), getattr(joined, field.name)
        assert (np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
                if isinstance(a, np.ndarray) else a == b), field.name


@pytest.mark.parametrize("seed", range(5))
def test_statistics_of_counted_values_equal_numpys_of_the_sample(seed):
    rng = np.random.default_rng(seed)
    for n in [1, 2, 3, 10, 101, 1000]:
        sample = np.round(rng.exponential(0.05, n), 3)  # ties, as a batch's step gives
        values, counts = np.unique(sample, return_counts=True)
        direct, counted = LatencyStats.of(sample.copy()), LatencyStats.of_counts(values, counts)
        assert (counted.p50, counted.p90, counted.p99) == (direct.p50, direct.p90, direct.p99)
        assert counted.mean == pytest.approx(direct.mean, rel=1e-12)


def test_simulate_keeps_columns_from_the_threshold_on_with_the_same_results(tmp_path,
                                                                            monkeypatch):
    argv = ["simulate", "--num-requests", "300", "--rate", "20", "--quiet"]
    results = []
    for threshold in (10**9, 100):  # records kept; columns kept
        monkeypatch.setattr(simulate_cli, "AUTO_STREAM_MIN_REQUESTS", threshold)
        out = tmp_path / f"{threshold}.json"
        assert main([*argv, "--json", str(out)]) == 0
        result = json.loads(out.read_text())
        result.pop("wall_s")
        results.append(result)
    assert results[0] == results[1] and results[0]["num_requests"] == 300
