"""Adapters for a workload: Zipf popularity, seeded, and carried by the canonical JSONL."""

import pytest
from tests.factories import make_spec

from shunter.core.types import RequestSpec
from shunter.errors import WorkloadError
from shunter.workload import load_workload, write_jsonl
from shunter.workload.lora import assign_loras, lora_popularity


def specs(n: int) -> list[RequestSpec]:
    return [make_spec(f"r{i}", arrival_s=i * 0.1) for i in range(n)]


def test_popularity_is_zipf():
    p = lora_popularity(100, 1.0)
    assert p[0] / p[9] == pytest.approx(10.0)
    assert p.sum() == pytest.approx(1.0)
    assert lora_popularity(4, 0.0).tolist() == [0.25] * 4


def test_assignment_is_seeded_and_skewed():
    a = assign_loras(specs(4000), 100, zipf=1.0, seed=7)
    assert a == assign_loras(specs(4000), 100, zipf=1.0, seed=7)
    assert a != assign_loras(specs(4000), 100, zipf=1.0, seed=8)
    share = sum(s.lora_id == "lora-0" for s in a) / len(a)
    assert share == pytest.approx(lora_popularity(100)[0], abs=0.02)  # 1 / H(100) = 0.19
    assert [s.arrival_s for s in a] == [s.arrival_s for s in specs(4000)]


def test_bad_adapter_counts_are_refused():
    with pytest.raises(ValueError, match="num_adapters"):
        assign_loras(specs(3), 0)
    with pytest.raises(ValueError, match="zipf"):
        assign_loras(specs(3), 5, zipf=float("nan"))


def test_jsonl_round_trips_the_adapter(tmp_path):
    path = tmp_path / "w.jsonl"
    written = assign_loras(specs(5), 3, seed=1) + [make_spec("base", arrival_s=1.0)]
    write_jsonl(written, path)
    assert load_workload(path, "jsonl") == written
    assert '"lora_id"' not in path.read_text().splitlines()[-1]


def test_a_bad_adapter_name_is_refused(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 2, "lora_id": 3}\n')
    with pytest.raises(WorkloadError, match="lora_id"):
        load_workload(path, "jsonl")
    with pytest.raises(ValueError, match="lora_id"):
        make_spec(lora_id="")
