"""Speculative decoding in the scheduler and the simulator (core.sched.speculative, SimExecutor)."""

import math

import pytest
from tests.factories import make_request, make_scheduler, make_spec, poisson_specs

from shunter.cli import main
from shunter.config import scenario_from_dict
from shunter.core.sched.interface import StepResult
from shunter.core.types import FinishReason
from shunter.errors import ConfigError
from shunter.sim.config import SimConfig
from shunter.sim.cost.speculative import SpeculativeConfig
from shunter.sim.runner import build_cluster, simulate

EAGLE = {"method": "eagle", "num_speculative_tokens": 4, "acceptance_rate": 0.7}


def expected_tokens_per_step(k: int, a: float) -> float:
    """1 + E[leading accepted drafts] = (1 - a^(k+1)) / (1 - a) (Leviathan et al. 2023)."""
    return (1 - a ** (k + 1)) / (1 - a)


def fingerprint(run) -> list:
    return [(r.request_id, r.finish_reason, list(r.token_times_s), r.finish_s)
            for r in sorted(run.records, key=lambda r: r.request_id)]


@pytest.mark.parametrize(("k", "a"), [(4, 0.7), (2, 0.5), (1, 0.9), (6, 0.3)])
def test_mean_tokens_per_decode_step_converges(k: int, a: float) -> None:
    spec = make_spec(num_prompt_tokens=64, num_output_tokens=8000)
    config = SimConfig(model="llama-3.1-8b", gpu="h100", speculative={
        "method": "ngram", "num_speculative_tokens": k, "acceptance_rate": a, "seed": 3})
    (record,) = simulate(config, [spec]).records
    times = list(record.token_times_s)
    assert len(times) == 8000
    num_steps = len(set(times)) - 1  # decode steps after the prefill's token
    mean = (len(times) - 1) / num_steps
    # per-step tokens have sd < k / 2 + 1; over > 2000 steps the mean is within ~0.05
    assert mean == pytest.approx(expected_tokens_per_step(k, a), abs=0.06)
    print(f"k={k} a={a}: {mean:.3f} tokens per decode step, "
          f"expected {expected_tokens_per_step(k, a):.3f}")


def test_acceptance_zero_is_plain_decoding_but_slower() -> None:
    specs = poisson_specs(40, seed=5, rate=2.0)
    plain = simulate(SimConfig(model="llama-3.1-8b", gpu="h100"), specs)
    spec = simulate(SimConfig(model="llama-3.1-8b", gpu="h100",
                              speculative={**EAGLE, "acceptance_rate": 0.0}), specs)
    by_id = {r.request_id: r for r in plain.records}
    slower = 0
    for r in spec.records:
        times, base = list(r.token_times_s), list(by_id[r.request_id].token_times_s)
        assert len(times) == len(base)
        assert all(b > a for a, b in zip(times, times[1:], strict=False))  # one token a step
        slower += times[-1] > base[-1]
    assert slower == len(specs)  # every request pays the drafter and the verification


def test_output_lengths_exact_and_token_times_monotonic() -> None:
    specs = [make_spec(f"r{i}", arrival_s=0.05 * i, num_prompt_tokens=30 + 7 * i,
                       num_output_tokens=1 + 13 * i, max_output_tokens=(20 if i % 3 == 0 else None))
             for i in range(30)]
    run = simulate(SimConfig(model="llama-3.1-8b", gpu="h100", speculative=EAGLE), specs)
    by_id = {s.request_id: s for s in specs}
    for r in run.records:
        s = by_id[r.request_id]
        times = list(r.token_times_s)
        cap = s.num_output_tokens if s.max_output_tokens is None else min(
            s.num_output_tokens, s.max_output_tokens)
        assert len(times) == cap
        assert all(b >= a for a, b in zip(times, times[1:], strict=False))
        assert r.finish_s == times[-1]
        truncated = s.max_output_tokens is not None and s.max_output_tokens < s.num_output_tokens
        assert r.finish_reason == (FinishReason.LENGTH if truncated else FinishReason.STOP)


def test_runs_repeat_exactly_and_seed_matters() -> None:
    specs = poisson_specs(60, seed=2, rate=8.0)
    config = SimConfig(model="llama-3.1-8b", gpu="h100", num_replicas=2, speculative=EAGLE)
    first, second = simulate(config, specs), simulate(config, specs)
    assert fingerprint(first) == fingerprint(second)
    other = simulate(SimConfig(model="llama-3.1-8b", gpu="h100", num_replicas=2,
                               speculative={**EAGLE, "seed": 1}), specs)
    assert fingerprint(other) != fingerprint(first)


def test_bulk_decode_runs_are_off_under_speculation() -> None:
    cluster = build_cluster(SimConfig(model="llama-3.1-8b", gpu="h100", speculative=EAGLE))
    assert not any(r.fast_forward for r in cluster.replicas)
    cluster = build_cluster(SimConfig(model="llama-3.1-8b", gpu="h100"))
    assert all(r.fast_forward for r in cluster.replicas)


# ---- the scheduler: lookahead slots, budget, accepted and rejected drafts --------------------

def _decode_ready(k: int = 4, **config: object):
    """A scheduler speculating `k` drafts with one request (14-token prompt, 4-token blocks)
    that has prefilled and sampled its first token."""
    scheduler = make_scheduler(num_blocks=32, block_size=4, **config)
    scheduler.enable_speculation(k)
    request = make_request(num_prompt_tokens=14, num_output_tokens=100, block_size=4)
    scheduler.add_request(request)
    while not request.num_output_tokens:  # (the prompt may take chunks)
        scheduler.update(scheduler.schedule(), StepResult(0.01, {request.request_id: 7}))
    assert (request.num_tokens, request.num_computed_tokens) == (15, 14)
    return scheduler, request


def test_decode_reserves_kv_for_its_drafts() -> None:
    scheduler, request = _decode_ready()
    out = scheduler.schedule()
    (chunk,) = out.chunks
    assert chunk.num_scheduled_tokens == 5 and chunk.is_sampling
    assert dict(out.num_draft_tokens) == {"r0": 4}
    assert out.shape.num_decode_requests == 1 and out.shape.num_decode_draft_tokens == 4
    assert out.shape.num_decode_context_tokens == 14 and not out.shape.prefill_chunks
    assert len(request.block_ids) == math.ceil((14 + 5) / 4)  # 5 blocks, not 4 without drafts


def test_accepted_drafts_then_rejected_ones() -> None:
    scheduler, request = _decode_ready()
    out = scheduler.schedule()
    outs = scheduler.update(out, StepResult(0.01, {"r0": 9}, accepted={"r0": (7, 8)}))
    assert outs[0].new_token_ids == (7, 8, 9)
    assert (request.num_output_tokens, request.num_tokens, request.num_computed_tokens) == (4, 18, 17)
    blocks = list(request.block_ids)
    out = scheduler.schedule()  # 17 computed + 5: 6 blocks
    outs = scheduler.update(out, StepResult(0.01, {"r0": 9}))  # every draft rejected
    assert outs[0].new_token_ids == (9,)
    assert (request.num_tokens, request.num_computed_tokens) == (19, 18)
    assert request.block_ids[:len(blocks)] == blocks and len(request.block_ids) == 6
    scheduler.kv.pool.check_invariants()


def test_drafts_cut_by_budget_and_context() -> None:
    scheduler, _ = _decode_ready(max_num_batched_tokens=3)
    assert dict(scheduler.schedule().num_draft_tokens) == {"r0": 2}
    scheduler, _ = _decode_ready(max_model_len=17)
    assert dict(scheduler.schedule().num_draft_tokens) == {"r0": 1}  # 15 tokens + 1 + 1 <= 17


def test_stop_inside_accepted_drafts_drops_the_rest() -> None:
    scheduler = make_scheduler(num_blocks=32, block_size=4)
    scheduler.enable_speculation(4)
    request = make_request(num_prompt_tokens=14, num_output_tokens=100, block_size=4,
                           max_output_tokens=3)
    scheduler.add_request(request)
    scheduler.update(scheduler.schedule(), StepResult(0.01, {"r0": 7}))
    out = scheduler.schedule()
    (result,) = scheduler.update(out, StepResult(0.01, {"r0": 9}, accepted={"r0": (1, 2, 3, 4)}))
    assert result.new_token_ids == (1, 2) and result.finish_reason == FinishReason.LENGTH
    assert request.num_output_tokens == 3 and not scheduler.has_work
    scheduler.kv.pool.check_invariants()


# ---- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("table", "named"), [
    ({**EAGLE, "num_speculative_tokens": 0}, "num_speculative_tokens"),
    ({**EAGLE, "num_speculative_tokens": 2.5}, "num_speculative_tokens"),
    ({**EAGLE, "acceptance_rate": 1.0}, "acceptance_rate"),
    ({**EAGLE, "acceptance_rate": -0.1}, "acceptance_rate"),
    ({**EAGLE, "method": "medusa"}, "method"),
    ({**EAGLE, "method": "draft_model"}, "draft model"),
    ({**EAGLE, "model": "llama-3.2-1b"}, "model"),
    ({**EAGLE, "method": "draft_model", "model": "no-such-model"}, "speculative model"),
    ({**EAGLE, "method": "draft_model", "model": "llama-2-7b"}, "vocabulary"),
    ({**EAGLE, "num_speculative_token": 4}, "num_speculative_token"),
    ({"method": "eagle", "num_speculative_tokens": 4}, "acceptance_rate"),
])
def test_bad_settings_name_the_key(table: dict, named: str) -> None:
    data = {"cluster": {"model": "llama-3.1-8b", "gpu": "h100"}, "speculative": table}
    with pytest.raises(ConfigError, match=named):
        scenario_from_dict(data)


def test_scenario_table_turns_it_on() -> None:
    scenario = scenario_from_dict({"cluster": {"model": "llama-3.1-70b", "gpu": "h100", "tp": 4},
                                   "speculative": {"model": "llama-3.1-8b",
                                                   "num_speculative_tokens": 3,
                                                   "acceptance_rate": 0.6}})
    spec = scenario.sim.speculative_config
    assert spec == SpeculativeConfig(model="llama-3.1-8b", num_speculative_tokens=3,
                                     acceptance_rate=0.6)
    assert spec.draft_method == "draft_model"


def test_combinations_not_modelled_are_refused() -> None:
    with pytest.raises(ValueError, match="roofline"):
        SimConfig(cost_model="profile", speculative=EAGLE)
    with pytest.raises(ValueError, match="dynasor"):
        SimConfig(policy="dynasor", speculative=EAGLE)


def test_fast_path_setting_changes_nothing() -> None:
    specs = poisson_specs(40, seed=7, rate=6.0)
    runs = [simulate(SimConfig(model="llama-3.1-8b", gpu="h100", fast_forward=ff,
                               speculative=EAGLE), specs) for ff in (True, False)]
    assert fingerprint(runs[0]) == fingerprint(runs[1])


@pytest.mark.parametrize(("argv", "named"), [
    (["--spec-tokens", "4"], "acceptance_rate"),
    (["--spec-tokens", "4", "--spec-acceptance", "0.7", "--spec-draft-model", "llama-2-7b"],
     "vocabulary"),
    (["--spec-tokens", "4", "--spec-acceptance", "0.5", "--spec-draft-model", "nope"],
     "speculative model"),
])
def test_cli_flags_refuse_bad_settings(argv: list[str], named: str, capsys) -> None:
    assert main(["simulate", "--model", "llama-3.1-8b", "--num-requests", "5", "--quiet",
                 *argv]) == 2
    assert named in capsys.readouterr().err


def test_cli_flags_turn_it_on(capsys) -> None:
    assert main(["simulate", "--model", "llama-3.1-8b", "--gpu", "h100", "--num-requests", "20",
                 "--quiet", "--spec-method", "eagle", "--spec-tokens", "3",
                 "--spec-acceptance", "0.6"]) == 0
    assert "speculative eagle (k 3, acceptance 0.6)" in " ".join(capsys.readouterr().out.split())
