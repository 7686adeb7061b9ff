"""Synthetic workloads: shares, classes, shared prefixes, determinism, validation."""

from __future__ import annotations

import collections
import dataclasses
import math

import pytest

from shunter.workload import (
    LengthDistribution,
    RequestClass,
    SharedPrefix,
    SyntheticWorkload,
    generate,
    load_workload,
    merge_workloads,
    write_jsonl,
)


def test_defaults_are_a_fixed_length_poisson_stream() -> None:
    specs = generate(SyntheticWorkload(num_requests=5000, rate=20.0), seed=0)
    assert [s.request_id for s in specs[:3]] == ["r0", "r1", "r2"]
    assert {(s.num_prompt_tokens, s.num_output_tokens, s.tenant, s.priority) for s in specs} == {
        (512, 128, "default", 0)}
    assert all(s.hash_ids is None for s in specs)
    assert (len(specs) - 1) / specs[-1].arrival_s == pytest.approx(20.0, rel=0.05)


def test_same_seed_same_workload_different_seed_different() -> None:
    config = SyntheticWorkload(num_requests=300, rate=5.0, arrival="gamma", cv=2.0,
                               prompt_tokens=LengthDistribution(kind="lognormal", mean_tokens=300),
                               tenants={"a": 1.0, "b": 2.0}, shared_prefix=SharedPrefix())
    assert generate(config, 4) == generate(config, 4)
    assert generate(config, 4) != generate(config, 5)


def test_tenant_shares_and_class_weights() -> None:
    config = SyntheticWorkload(
        num_requests=20000, rate=100.0, tenants={"big": 3.0, "small": 1.0},
        classes=(RequestClass(weight=1.0, priority=0, ttft_slo_s=0.2, tpot_slo_s=0.05),
                 RequestClass(weight=4.0, priority=2, ttft_slo_s=2.0)))
    specs = generate(config, seed=1)
    tenants = collections.Counter(s.tenant for s in specs)
    assert tenants["big"] / len(specs) == pytest.approx(0.75, abs=0.02)
    by_priority = {s.priority: (s.ttft_slo_s, s.tpot_slo_s) for s in specs}
    assert by_priority == {0: (0.2, 0.05), 2: (2.0, None)}
    share_urgent = sum(s.priority == 0 for s in specs) / len(specs)
    assert share_urgent == pytest.approx(0.2, abs=0.02)


def test_changing_tenant_shares_keeps_arrivals_and_lengths() -> None:
    base = SyntheticWorkload(num_requests=200, rate=3.0,
                             prompt_tokens=LengthDistribution(kind="uniform", max_tokens=900))
    one = generate(base, 9)
    two = generate(dataclasses.replace(base, tenants={"x": 1.0, "y": 1.0}), 9)
    assert [(s.arrival_s, s.num_prompt_tokens) for s in one] == [
        (s.arrival_s, s.num_prompt_tokens) for s in two]


def test_max_output_tokens_caps_true_outputs() -> None:
    config = SyntheticWorkload(num_requests=500, rate=1.0, max_output_tokens=100,
                               output_tokens=LengthDistribution(kind="uniform", min_tokens=50,
                                                                max_tokens=150))
    specs = generate(config, 0)
    assert max(s.num_output_tokens for s in specs) == 100
    assert all(s.max_output_tokens == 100 for s in specs)


def test_shared_prefix_requests_reuse_their_tenants_system_prompts() -> None:
    prefix = SharedPrefix(num_prefixes_per_tenant=2, popularity_alpha=0.0, hash_block_size=16,
                          prefix_tokens=LengthDistribution(kind="fixed", mean_tokens=100))
    config = SyntheticWorkload(num_requests=400, rate=10.0, tenants={"a": 1.0, "b": 1.0},
                               prompt_tokens=LengthDistribution(kind="fixed", mean_tokens=40),
                               shared_prefix=prefix)
    specs = generate(config, 3)
    # 100-token prompts round down to 6 whole blocks (96 tokens), then 40 own tokens (3 blocks).
    assert {s.num_prompt_tokens for s in specs} == {96 + 40}
    assert all(len(s.hash_ids) == 9 and s.hash_block_size == 16 for s in specs)
    prefixes = collections.defaultdict(set)
    for s in specs:
        prefixes[s.tenant].add(s.hash_ids[:6])
    assert [len(prefixes[t]) for t in ("a", "b")] == [2, 2]
    assert not prefixes["a"] & prefixes["b"]
    own = [s.hash_ids[6:] for s in specs]
    assert len(set(own)) == len(own)  # the rest is unique to each request


def test_prefix_popularity_skews_towards_the_first_prompt() -> None:
    prefix = SharedPrefix(num_prefixes_per_tenant=4, popularity_alpha=2.0)
    specs = generate(SyntheticWorkload(num_requests=5000, rate=10.0, shared_prefix=prefix), 0)
    counts = collections.Counter(s.hash_ids[:64] for s in specs).most_common()
    weights = [1 / (r + 1) ** 2 for r in range(4)]
    assert counts[0][1] / len(specs) == pytest.approx(weights[0] / sum(weights), abs=0.03)


def test_lengths_sampled_jointly_from_a_file(write_file) -> None:
    path = write_file("l.csv", "num_prefill_tokens,num_decode_tokens\n10,1\n20,2\n30,3\n")
    specs = generate(SyntheticWorkload(num_requests=200, rate=1.0, length_file=str(path)), 0)
    pairs = {(s.num_prompt_tokens, s.num_output_tokens) for s in specs}
    assert pairs == {(10, 1), (20, 2), (30, 3)}


def test_generated_workload_round_trips_through_jsonl(tmp_path) -> None:
    config = SyntheticWorkload(num_requests=100, rate=2.0, tenants={"a": 1.0, "b": 1.0},
                               classes=(RequestClass(ttft_slo_s=0.3, tpot_slo_s=0.04),),
                               shared_prefix=SharedPrefix())
    specs = generate(config, 0)
    write_jsonl(specs, tmp_path / "g.jsonl")
    assert load_workload(tmp_path / "g.jsonl") == specs


def test_merge_sorts_stably_and_renumbers() -> None:
    a = generate(SyntheticWorkload(num_requests=50, rate=2.0, tenants={"a": 1.0}), 0)
    b = generate(SyntheticWorkload(num_requests=50, rate=5.0, tenants={"b": 1.0}), 1)
    merged = merge_workloads(a, b)
    assert len(merged) == 100 and len({s.request_id for s in merged}) == 100
    assert [s.arrival_s for s in merged] == sorted(s.arrival_s for s in a + b)
    assert merged[0].tenant == "a" and merged[1].tenant == "b"  # both start at 0: stable order


def test_all_at_once() -> None:
    specs = generate(SyntheticWorkload(num_requests=3, rate=math.inf), 0)
    assert [s.arrival_s for s in specs] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_requests": 0}, "num_requests must be >= 1"),
    ({"rate": 0.0}, "rate must be > 0"),
    ({"arrival": "bursty"}, "unknown arrival process 'bursty'; valid: poisson, gamma"),
    ({"cv": -1.0}, "cv must be"),
    ({"tenants": {}}, "at least one tenant"),
    ({"tenants": {"a": 0.0}}, "tenant 'a': share must be"),
    ({"classes": ()}, "at least one RequestClass"),
    ({"max_output_tokens": 0}, "max_output_tokens must be >= 1"),
])
def test_invalid_configs(kwargs: dict, message: str) -> None:
    fields = {"num_requests": 10, "rate": 1.0} | kwargs
    with pytest.raises(ValueError, match=message):
        SyntheticWorkload(**fields)


def test_invalid_parts() -> None:
    with pytest.raises(ValueError, match="class weight"):
        RequestClass(weight=0.0)
    with pytest.raises(ValueError, match="ttft_slo_s must be > 0"):
        RequestClass(ttft_slo_s=0.0)
    with pytest.raises(ValueError, match="num_prefixes_per_tenant"):
        SharedPrefix(num_prefixes_per_tenant=0)
