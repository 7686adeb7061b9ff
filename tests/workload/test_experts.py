"""Expert routing profiles: the seeded generator and the JSONL field."""

import json

import pytest

from shunter.core.types import ExpertProfile, RequestSpec
from shunter.errors import ConfigError, WorkloadError
from shunter.workload.experts import ExpertRouting, expert_profiles, with_expert_profiles
from shunter.workload.jsonl import spec_to_line, write_jsonl
from shunter.workload.loaders import load_workload


def specs(n: int) -> list[RequestSpec]:
    return [RequestSpec(request_id=f"r{i}", arrival_s=float(i), num_prompt_tokens=100,
                        num_output_tokens=50) for i in range(n)]


def test_profiles_are_seeded_distributions_clustered_by_topic():
    routing = ExpertRouting(num_experts=8, num_clusters=3)
    profiles, topics = expert_profiles(300, routing, seed=5)
    again, _ = expert_profiles(300, routing, seed=5)
    assert [p.weights for p in profiles] == [p.weights for p in again]
    assert [p.weights for p in expert_profiles(300, routing, seed=6)[0]] != \
        [p.weights for p in profiles]
    assert set(topics) == {0, 1, 2} and all(len(p.weights) == 8 for p in profiles)

    def top(p: ExpertProfile) -> int:
        return max(range(8), key=lambda e: p.weights[e])
    # requests of one topic lean on the same expert far more often than across topics
    same = [top(p) for p, t in zip(profiles, topics, strict=True) if t == topics[0]]
    assert same.count(max(set(same), key=same.count)) > 0.6 * len(same)


def test_with_expert_profiles_keeps_everything_else():
    out = with_expert_profiles(specs(4), ExpertRouting(num_experts=4), seed=0)
    assert [s.request_id for s in out] == ["r0", "r1", "r2", "r3"]
    assert all(s.expert_profile is not None and len(s.expert_profile.weights) == 4 for s in out)
    assert out[0].num_prompt_tokens == 100


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_experts": 0}, "num_experts must be a whole number >= 1"),
    ({"num_experts": 8, "num_clusters": 2.5}, "num_clusters must be a whole number"),
    ({"num_experts": 8, "cluster_concentration": 0}, "cluster_concentration must be a finite"),
    ({"num_experts": 8, "request_concentration": float("nan")}, "request_concentration"),
])
def test_bad_routing_settings_name_themselves(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ExpertRouting(**kwargs)


def test_jsonl_round_trips_a_profile_exactly(tmp_path):
    out = with_expert_profiles(specs(3), ExpertRouting(num_experts=8), seed=1)
    path = tmp_path / "x.jsonl"
    write_jsonl(out, path)
    back = load_workload(path)
    assert [s.expert_profile.weights for s in back] == [s.expert_profile.weights for s in out]
    assert "expert_profile" not in spec_to_line(specs(1)[0], 0)  # absent when none


def test_jsonl_profiles_are_normalized_and_bad_ones_name_the_field(tmp_path):
    path = tmp_path / "p.jsonl"
    line = {"timestamp": 0, "input_length": 10, "output_length": 5, "expert_profile": [3, 1]}
    path.write_text(json.dumps(line) + "\n")
    assert load_workload(path)[0].expert_profile.weights == (0.75, 0.25)
    for bad in ([], [1, -1], [0, 0], "x"):
        path.write_text(json.dumps({**line, "expert_profile": bad}) + "\n")
        with pytest.raises(WorkloadError, match="expert_profile"):
            load_workload(path)
