"""The simulator's side of predictions and of Sarathi's budget: predictions are set at arrival
(oracles alone see the truth), and the token budget follows the TBT target."""

import pytest
from tests.factories import make_spec

from shunter.errors import ConfigError
from shunter.sim.budget import budget_for_tbt, hybrid_step_time_s
from shunter.sim.config import SimConfig
from shunter.sim.cost import make_cost_model
from shunter.sim.runner import build_cluster, scheduler_config, simulate


def test_budget_is_the_largest_whose_worst_step_meets_the_target():
    cost = make_cost_model("roofline", "mistral-7b", "a100-80gb")
    worst = {"num_decodes": 64, "decode_context_tokens": 64 * 2048}
    for target in (0.05, 0.1, 0.5):
        b = budget_for_tbt(cost, target, **worst)
        assert hybrid_step_time_s(cost, b, **worst) <= target < hybrid_step_time_s(cost, b + 32, **worst)
    assert budget_for_tbt(cost, 0.05, **worst) < budget_for_tbt(cost, 0.1, **worst)
    with pytest.raises(ConfigError, match="out of reach"):
        budget_for_tbt(cost, 0.001, **worst)


def test_sarathi_derives_its_budget_unless_the_scenario_sets_one():
    cost = make_cost_model("roofline", "mistral-7b", "a100-80gb")
    derived = scheduler_config(SimConfig(model="mistral-7b", policy="sarathi",
                                         policy_params={"tbt_slo_s": 0.1}), cost)
    kv_tokens = cost.num_kv_blocks(16) * 16
    assert derived.max_num_batched_tokens == budget_for_tbt(
        cost, 0.1, num_decodes=256, decode_context_tokens=kv_tokens)  # full batch, full cache
    fixed = scheduler_config(SimConfig(model="mistral-7b", policy="sarathi",
                                       scheduler={"max_num_batched_tokens": 512}), cost)
    assert fixed.max_num_batched_tokens == 512
    with pytest.raises(ConfigError, match="chunked"):
        scheduler_config(SimConfig(policy="sarathi", scheduler={"enable_chunked_prefill": False}), cost)


def test_predictions_are_set_at_arrival_and_only_oracles_see_the_truth():
    spec = make_spec("a", num_prompt_tokens=100, num_output_tokens=37)

    def predicted(config):
        cluster = build_cluster(config)
        cluster._route(spec, [])  # what an arrival does
        return cluster.replicas[0].scheduler.requests["a"].predicted_output_tokens

    assert predicted(SimConfig(predictor="oracle")) == 37.0
    learned = SimConfig(predictor="learned", predictor_params={"weights": {"bias": 2.0}})
    assert predicted(learned) == pytest.approx(6.389, abs=1e-3)
    assert predicted(SimConfig()) is None


def test_sjf_with_the_oracle_beats_fcfs_on_mean_latency_when_queued():
    # one sequence at a time, all at t=0: the first arrival starts at once, then a long job
    # queues ahead of many short ones
    specs = [make_spec("first", num_prompt_tokens=64, num_output_tokens=20),
             make_spec("long", num_prompt_tokens=64, num_output_tokens=2000)]
    specs += [make_spec(f"s{i}", num_prompt_tokens=64, num_output_tokens=20) for i in range(12)]
    def mean_e2e(policy, predictor=None):
        run = simulate(SimConfig(policy=policy, predictor=predictor,
                                 scheduler={"max_num_seqs": 1}), specs)
        return sum(r.e2e_s for r in run.records) / len(run.records)
    assert mean_e2e("sjf", "oracle") < 0.3 * mean_e2e("fcfs")
