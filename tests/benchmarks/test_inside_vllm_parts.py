"""The inside-vLLM benchmark's own parts, without vLLM: its workloads put each policy to work in
the simulator with the benchmark's vLLM settings (each policy moves its row's metric the way
the paper says), a simulated run replayed through `sim_replay` agrees with itself exactly (tau
1, error 0: the comparison is not rigged to pass), and the bench sends each row's tags in
`vllm_xargs`. The live half runs in `python benchmarks/inside_vllm.py` (README)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import inside_vllm as bench
from shunter.bench.client import EndpointConfig, request_body
from shunter.core.types import RequestSpec, StepShape
from shunter.errors import ConfigError
from shunter.sim.cost.catalog import get_model
from shunter.sim.cost.profile import fit_profile, save_profile
from shunter.sim.runner import simulate

KV_TOKENS = 46_592


def _step_s(shape: StepShape) -> float:
    """Roughly vLLM-CPU's SmolLM2 on one thread: 25 ms a decode step, 0.4 ms a prompt token."""
    prompt = sum(n for n, _ in shape.prefill_chunks)
    return 0.025 + 0.004 * shape.num_decode_requests + 0.0004 * prompt


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shapes = [StepShape(prefill_chunks=((p, 0),)) for p in (16, 32, 64, 128, 256)]
    shapes += [StepShape(num_decode_requests=b, num_decode_context_tokens=b * c)
               for b in (1, 2, 3, 4) for c in (32, 128)]
    spec = get_model(bench.MODEL)
    fitted = fit_profile([(s, _step_s(s)) for s in shapes], model=bench.MODEL, source="test",
                         max_model_len=spec.max_model_len,
                         kv_bytes_per_token=spec.kv_bytes_per_token,
                         kv_capacity_tokens=KV_TOKENS)
    return save_profile(fitted, tmp_path_factory.mktemp("profile") / "profile.json")


def _run(row: bench.Row, policy: str, profile: Path) -> list:
    config = bench.sim_config(policy, row.params if policy == row.policy else {},
                              row.predictor if policy == row.policy else None, profile,
                              KV_TOKENS)
    return simulate(config, row.workload(20.0)).records


@pytest.mark.parametrize("row", bench.ROWS, ids=lambda r: r.key)
def test_each_policy_moves_its_rows_metric(row: bench.Row, profile: Path) -> None:
    fcfs, policy = _run(row, "fcfs", profile), _run(row, row.policy, profile)
    assert all(r.is_completed for r in fcfs + policy)
    # the workloads are past saturation, so the policy's order shows: vtc narrows the gap, sjf
    # and priority cut their latency, each by a margin no rounding could give
    assert row.metric(policy) < 0.8 * row.metric(fcfs)


@pytest.mark.parametrize("row", bench.ROWS, ids=lambda r: r.key)
def test_a_replay_of_a_simulated_run_agrees_with_it_exactly(row: bench.Row,
                                                            profile: Path) -> None:
    records = _run(row, row.policy, profile)
    config = bench.sim_config(row.policy, row.params, row.predictor, profile, KV_TOKENS)
    result = bench.compare_run(row, row.policy, records, bench.sim_replay(records, config))
    assert result["tau"] == pytest.approx(1.0) and result["error"] == pytest.approx(0.0)
    shuffled = bench.sim_replay(records, bench.sim_config("fcfs", {}, None, profile, KV_TOKENS))
    other = bench.compare_run(row, row.policy, records, shuffled)  # another policy's order
    assert other["tau"] < 0.95 or abs(other["error"]) > 0.1
    table, ok = bench.report([result], [row])
    assert ok and f"`{row.policy}`" in table


def test_the_bench_sends_the_rows_tags_in_vllm_xargs() -> None:
    spec = RequestSpec(request_id="r", arrival_s=0.0, num_prompt_tokens=8, num_output_tokens=5,
                       tenant="light", priority=1)
    body = request_body(spec, EndpointConfig(url="http://127.0.0.1:1", model="m",
                                             vllm_xargs=("tenant", "predicted_output_tokens")))
    assert body["vllm_xargs"] == {"tenant": "light", "predicted_output_tokens": 5}
    assert body["priority"] == 1
    assert "vllm_xargs" not in request_body(spec, EndpointConfig(url="http://127.0.0.1:1",
                                                                 model="m"))
    with pytest.raises(ConfigError, match="'tenantt'"):
        EndpointConfig(url="http://127.0.0.1:1", model="m", vllm_xargs=("tenantt",))
