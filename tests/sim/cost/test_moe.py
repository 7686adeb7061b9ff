"""Mixture-of-experts models: parameter counts, step times, expert parallelism, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from shunter.cli import main
from shunter.config import Scenario, scenario_from_dict
from shunter.core.types import StepShape
from shunter.errors import ConfigError
from shunter.sim.config import SimConfig
from shunter.sim.cost import (
    ModelSpec,
    MoeRooflineCostModel,
    RooflineCostModel,
    get_model,
    make_cost_model,
)
from shunter.sim.cost.moe import roofline_cost_model


# Published sizes: Mistral's Mixtral announcement (46.7B / 12.9B), the DeepSeek-V3 report
# (671B / 37B, without the 14B MTP module), OpenAI's gpt-oss model card (116.83B / 5.13B).
# Active counts here leave out the input embedding (a gather): Mixtral's 12.9B counts it.
@pytest.mark.parametrize("name, total_b, active_b, rel", [
    ("mixtral-8x7b", 46.7, 12.9, 0.015),  # 46.70B (0.0%), 12.75B (-1.2%)
    ("deepseek-v3", 671.0, 37.0, 0.015),  # 671.03B (0.0%), 36.63B (-1.0%)
    ("gpt-oss-120b", 116.83, 5.13, 0.005),  # 116.79B (-0.04%), 5.13B (0.0%)
])
def test_parameter_counts_match_published(name: str, total_b: float, active_b: float,
                                          rel: float) -> None:
    model = get_model(name)
    assert model.num_params / 1e9 == pytest.approx(total_b, rel=rel)
    assert model.num_active_params() / 1e9 == pytest.approx(active_b, rel=rel)


def test_experts_hit_grow_from_top_k_towards_all() -> None:
    m = get_model("mixtral-8x7b")
    assert m.num_experts_hit(1) == pytest.approx(2.0)
    assert m.num_experts_hit(8) == pytest.approx(8 * (1 - 0.75**8))  # 7.2 of 8
    assert m.num_experts_hit(1000) == pytest.approx(8.0)
    assert m.num_active_params(1) < m.num_active_params(4) < m.num_params


def test_dense_models_are_unchanged() -> None:
    assert not get_model("llama-3.1-8b").is_moe
    assert make_cost_model("roofline", "llama-3.1-8b", "h100").__class__ is RooflineCostModel
    assert isinstance(make_cost_model("roofline", "mixtral-8x7b", "h100", 2), MoeRooflineCostModel)


def _dense_twin(intermediate_size: int) -> ModelSpec:
    """Mixtral's shape with one dense MLP of the given width (8 x 14336: same total size)."""
    m = get_model("mixtral-8x7b")
    return dataclasses.replace(m, name=f"dense-{intermediate_size}", num_experts=0,
                               num_experts_per_token=0, expert_intermediate_size=0,
                               intermediate_size=intermediate_size)


# At batch 16 a Mixtral layer touches 7.9 of its 8 experts in expectation (`num_experts_hit`)
# and costs as much as its dense twin (plus the router and expert kernels' launches).
@pytest.mark.parametrize("batch", [1, 2, 4])
def test_moe_decode_costs_between_dense_of_total_and_of_active_size(batch: int) -> None:
    shape = StepShape(num_decode_requests=batch, num_decode_context_tokens=batch * 1024)
    moe = roofline_cost_model("mixtral-8x7b", "h100", 2)
    total = RooflineCostModel(_dense_twin(8 * 14336), "h100", 2)
    active = RooflineCostModel(_dense_twin(2 * 14336), "h100", 2)
    assert get_model("mixtral-8x7b").num_params == pytest.approx(total.model.num_params, rel=1e-3)
    assert active.step_time_s(shape) < moe.step_time_s(shape) < total.step_time_s(shape)


def test_more_ep_gpus_cut_expert_reads_and_add_all_to_all() -> None:
    tp1 = roofline_cost_model("mixtral-8x7b", "h100", 2, ep=1)
    ep2 = roofline_cost_model("mixtral-8x7b", "h100", 2, ep=2)
    ep4 = roofline_cost_model("mixtral-8x7b", "h100", 4, ep=4)
    assert tp1.all_to_all_time_s(64) == 0.0
    assert 0.0 < ep2.all_to_all_time_s(64) < ep4.all_to_all_time_s(64)
    assert ep4.expert_weight_read_time_s(64) == pytest.approx(ep2.expert_weight_read_time_s(64) / 2)
    # same GPUs: EP moves the work (all-to-all), not the bytes each GPU reads
    assert ep2.expert_weight_read_time_s(64) == pytest.approx(tp1.expert_weight_read_time_s(64))
    # all-to-all bytes: tokens x hidden x 2 bytes x top-k, a 1/tp share each leaving the GPU
    link = ep4.gpu.intra_node_bandwidth_bytes_s * ep4.gpu.intra_node_efficiency
    per_token = 2 * 4096 * 2 * 2 * (3 / 4) / 4 / link  # dispatch + combine
    assert ep4.all_to_all_time_s(1001) - ep4.all_to_all_time_s(1) == pytest.approx(
        1000 * per_token)


def test_imbalance_stretches_expert_compute_under_ep_only() -> None:
    even = roofline_cost_model("mixtral-8x7b", "h100", 2, ep=2)
    skewed = roofline_cost_model("mixtral-8x7b", "h100", 2, ep=2, expert_imbalance=1.5)
    assert skewed.expert_time_s(4096) == pytest.approx(
        1.5 * (even.expert_time_s(4096) - 8e-6) + 8e-6, rel=0.01)  # compute-bound
    shape = StepShape(prefill_chunks=((4096, 0),))
    assert skewed.step_time_s(shape) > even.step_time_s(shape)
    tp_only = roofline_cost_model("mixtral-8x7b", "h100", 2, expert_imbalance=1.5)
    assert tp_only.step_time_s(shape) == roofline_cost_model("mixtral-8x7b", "h100", 2).step_time_s(
        shape)


def test_memory_per_gpu_and_decode_line() -> None:
    two = roofline_cost_model("mixtral-8x7b", "h100", 2, ep=2)
    four = roofline_cost_model("mixtral-8x7b", "h100", 4, ep=4)
    assert two.weight_bytes_per_gpu() / 2**30 == pytest.approx(46.7e9 * 2 / 2 / 2**30, rel=0.01)
    assert four.weight_bytes_per_gpu() < two.weight_bytes_per_gpu() / 1.9
    assert four.num_kv_blocks(16) > 2 * two.num_kv_blocks(16)
    ds = roofline_cost_model("deepseek-v3", "h200", 8, ep=8)
    assert ds.kv_bytes_per_token == 61 * (512 + 64) * 2 * 8  # latent, replicated on 8 ranks
    fixed, slope = ds.decode_step_line_s(32)
    shape = StepShape(num_decode_requests=32, num_decode_context_tokens=50_000)
    assert ds.step_time_s(shape) == fixed + slope * 50_000


@pytest.mark.parametrize("model, tp, ep, message", [
    ("mixtral-8x7b", 3, 1, "tp=3 must divide mixtral-8x7b's 32 attention heads"),
    ("mixtral-8x7b", 16, 16, "ep=16 must divide mixtral-8x7b's 8 routed experts"),
    ("gpt-oss-120b", 4, 3, "ep=3 must divide gpt-oss-120b's 128 routed experts"),
    ("mixtral-8x7b", 2, 4, "ep=4 must divide tp=2"),
    ("llama-3.1-8b", 2, 2, "ep=2 needs a mixture-of-experts model; llama-3.1-8b is dense"),
    ("mixtral-8x7b", 1, 1, "mixtral-8x7b does not fit on 1 x h100"),
    ("deepseek-v3", 8, 8, "deepseek-v3 does not fit on 8 x h100 \\(ep=8\\)"),
])
def test_impossible_combinations_are_refused(model: str, tp: int, ep: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_cost_model("roofline", model, "h100", tp, ep=ep)


def test_sim_config_and_scenario_refuse_bad_ep() -> None:
    with pytest.raises(ConfigError, match="is dense"):
        SimConfig(model="llama-3.1-8b", tp=2, ep=2)
    with pytest.raises(ValueError, match="expert_imbalance must be >= 1"):
        SimConfig(model="mixtral-8x7b", tp=2, ep=2, expert_imbalance=0.5)
    with pytest.raises(ConfigError, match="ep=2 needs a mixture-of-experts model"):
        Scenario().with_overrides(ep=2)


def test_scenario_cluster_table_takes_ep_and_imbalance() -> None:
    cluster = {"model": "gpt-oss-120b", "gpu": "h100", "tp": 4, "ep": 4, "expert_imbalance": 1.2}
    sim = scenario_from_dict({"cluster": cluster}).sim
    assert (sim.ep, sim.expert_imbalance) == (4, 1.2)
    with pytest.raises(ConfigError, match=r"scenario: ep=3 must divide gpt-oss-120b's 128"):
        scenario_from_dict({"cluster": {**cluster, "ep": 3}})
    with pytest.raises(ConfigError, match="ep must be an int"):
        scenario_from_dict({"cluster": {**cluster, "ep": 2.5}})


def _simulate(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    argv = ["simulate", "--model", "mixtral-8x7b", "--gpu", "h100", "--tp", "2",
            "--num-requests", "200", "--quiet", "--json", str(out), *extra]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    result.pop("wall_s")
    return result


def test_cli_simulates_mixtral_with_ep_deterministically(tmp_path: Path) -> None:
    first = _simulate(tmp_path, "a", "--ep", "2")
    assert first == _simulate(tmp_path, "b", "--ep", "2")
    assert first["ep"] == 2 and first["model"] == "mixtral-8x7b"
    assert first["num_requests"] == 200


def test_cli_ep_reaches_the_cost_model(tmp_path: Path) -> None:
    with_ep = _simulate(tmp_path, "ep", "--ep", "2")
    without = _simulate(tmp_path, "tp", "--tp", "2")
    assert with_ep["tpot_s"] != without["tpot_s"]
