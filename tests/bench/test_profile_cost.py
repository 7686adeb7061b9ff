"""The `profile` cost model (shunter.sim.cost.profile): fit, evaluation, file, registry, sim."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shunter.core.types import RequestSpec, StepShape
from shunter.errors import ConfigError
from shunter.sim.config import SimConfig
from shunter.sim.cost.profile import (
    ProfileCostModel,
    StepProfile,
    fit_profile,
    load_profile,
    save_profile,
)
from shunter.sim.cost.profile_fit import choose_knots, nnls, step_features
from shunter.sim.cost.registry import make_cost_model
from shunter.sim.runner import simulate


def true_step_s(shape: StepShape) -> float:
    """A made-up backend: flat to 8 tokens, then 1 ms per token; prompts cost 5 ms each."""
    pairs = sum(n * (ctx + n) for n, ctx in shape.prefill_chunks)
    return (0.02 + 0.001 * max(0, shape.num_tokens - 8) + 0.005 * len(shape.prefill_chunks)
            + 1e-7 * pairs + 2e-6 * shape.num_decode_context_tokens)


def samples(noise: float = 0.0, seed: int = 0) -> list[tuple[StepShape, float]]:
    rng = np.random.default_rng(seed)
    shapes = [StepShape(prefill_chunks=((p, 0),)) for p in (16, 32, 64, 128, 256, 512)]
    shapes += [StepShape(num_decode_requests=b, num_decode_context_tokens=b * c)
               for b in (1, 2, 4, 8, 16, 32) for c in (64, 512)]
    return [(s, true_step_s(s) * (1 + rng.uniform(-noise, noise))) for s in shapes]


def fitted(noise: float = 0.0) -> StepProfile:
    return fit_profile(samples(noise), model="toy", source="test", max_model_len=4096,
                       kv_bytes_per_token=1000, kv_capacity_tokens=16384)


def test_nnls_matches_a_known_solution_and_clips_negative_ones() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert np.allclose(nnls(a, a @ np.array([2.0, 3.0])), [2.0, 3.0])
    x = nnls(a, np.array([1.0, -1.0, 0.0]))  # unconstrained answer has x1 < 0
    assert x[1] == 0.0 and x[0] == pytest.approx(0.5)


def test_knots_double_and_leave_the_last_segment_open() -> None:
    assert choose_knots([1, 2, 3, 4, 8, 9, 16, 40]) == (1, 2, 4, 8, 16)
    assert choose_knots([5]) == (5,)
    assert step_features(StepShape(num_decode_requests=3, num_decode_context_tokens=30),
                         (1, 2, 4)) == [1.0, 0.0, 0.0, 30.0, 1.0, 1.0, 0.0]


def test_fit_recovers_a_noiseless_backend() -> None:
    model = ProfileCostModel(fitted())
    for shape, seconds in samples():
        assert model.step_time_s(shape) == pytest.approx(seconds, rel=0.02)
    unseen = StepShape(prefill_chunks=((100, 50),), num_decode_requests=5,
                       num_decode_context_tokens=900)
    assert model.step_time_s(unseen) == pytest.approx(true_step_s(unseen), rel=0.05)


def test_fit_with_noise_stays_close_and_reports_its_error() -> None:
    profile = fitted(noise=0.05)
    errors = profile.errors()
    assert errors["mean_rel_error"] < 0.05 and errors["max_rel_error"] < 0.15


def test_step_time_grows_with_tokens_and_context() -> None:
    model = ProfileCostModel(fitted())
    times = [model.step_time_s(StepShape(prefill_chunks=((n, 0),))) for n in range(1, 1200, 7)]
    assert all(b >= a for a, b in zip(times, times[1:], strict=False))
    assert model.step_time_s(StepShape()) == model.profile.fixed_s


def test_decode_step_line_equals_step_time_bit_for_bit() -> None:
    model = ProfileCostModel(fitted(noise=0.05))
    rng = np.random.default_rng(1)
    for n in (1, 3, 17, 64, 300):
        fixed, slope = model.decode_step_line_s(n)
        for c in rng.integers(n, 50_000, size=64).tolist():
            shape = StepShape(num_decode_requests=n, num_decode_context_tokens=c)
            assert fixed + slope * c == model.step_time_s(shape)  # exact, not approx


def test_file_round_trip_and_bad_files(tmp_path) -> None:
    profile = fitted(noise=0.02)
    path = save_profile(profile, tmp_path / "p.json")
    assert load_profile(path) == profile
    assert json.loads(path.read_text())["fit"]["mean_rel_error"] >= 0
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match="not a step profile"):
        load_profile(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile(tmp_path / "missing.json")


def test_too_few_samples_and_bad_samples_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="at least"):
        fit_profile(samples()[:3], model="m", source="s", max_model_len=10, kv_bytes_per_token=1)
    bad = [(StepShape(num_decode_requests=1), -1.0)] * 20
    with pytest.raises(ConfigError, match="finite and > 0"):
        fit_profile(bad, model="m", source="s", max_model_len=10, kv_bytes_per_token=1)


def test_registry_builds_it_from_a_path_and_the_simulator_runs_on_it(tmp_path) -> None:
    path = save_profile(fitted(), tmp_path / "p.json")
    model = make_cost_model("profile", "anything", str(path))
    assert model.num_kv_blocks(16) == 1024 and model.max_model_len == 4096
    with pytest.raises(ConfigError, match="tp = 1"):
        make_cost_model("profile", "anything", str(path), 2)
    specs = [RequestSpec(request_id=f"r{i}", arrival_s=0.5 * i, num_prompt_tokens=64,
                         num_output_tokens=10) for i in range(8)]
    config = SimConfig(model="smollm2-135m", gpu=str(path), cost_model="profile",
                       scheduler={"max_num_batched_tokens": 512, "max_num_seqs": 8})
    records = simulate(config, specs).records
    assert all(r.is_completed and r.num_output_tokens == 10 for r in records)
    lone = records[0]  # alone at t=0: one prefill step, then nine decode steps
    prefill_s = ProfileCostModel(fitted()).step_time_s(StepShape(prefill_chunks=((64, 0),)))
    assert lone.ttft_s == pytest.approx(prefill_s)


def test_unknown_kv_capacity_asks_for_num_blocks() -> None:
    profile = fit_profile(samples(), model="m", source="s", max_model_len=10,
                          kv_bytes_per_token=1)
    with pytest.raises(ConfigError, match="num_blocks"):
        ProfileCostModel(profile).num_kv_blocks(16)


def test_shunter_simulate_accepts_a_profile_through_a_scenario_file(tmp_path) -> None:
    from shunter.cli import main  # the composition root, as a user runs it

    profile = save_profile(fitted(), tmp_path / "p.json")
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(f'{{"timestamp": {i * 200}, "input_length": 40, '
                             f'"output_length": 5}}\n' for i in range(5)))
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'[workload]\ntrace = "{trace}"\n[cluster]\nmodel = "smollm2-135m"\n'
                        f'cost_model = "profile"\ngpu = "{profile}"\n'
                        '[scheduler]\nmax_num_batched_tokens = 512\nmax_num_seqs = 8\n')
    out = tmp_path / "r.json"
    assert main(["simulate", str(scenario), "--quiet", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_completed"] == 5
    alone = ProfileCostModel(fitted()).step_time_s(StepShape(prefill_chunks=((40, 0),)))
    assert result["ttft_s"]["p50"] == pytest.approx(alone)  # 200 ms apart: never queued
