"""SkipPredict: the policy's order, its two predictors, and the cost of predicting as the
simulator charges it (external wait, or server time on the replica)."""

from dataclasses import replace

import pytest
from tests.factories import make_request, make_spec, poisson_specs

from shunter.core.predict import RequestFeatures, make_predictor
from shunter.core.predict.interface import NO_COST, PredictionCost, prediction_cost
from shunter.core.predict.skip import SHORT_PREDICTION, SkipOraclePredictor
from shunter.core.sched.gateway_queue import GatewayQueue, gateway_refusal
from shunter.core.sched.registry import PREDICTIVE_POLICIES, make_policy
from shunter.gateway.settings import SchedulerSettings
from shunter.metrics import summarize
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate

FEATURES = RequestFeatures(num_prompt_tokens=100)


def _requests(predictions, priorities=None):
    reqs = [make_request(f"r{i}", arrival_s=float(i), priority=(priorities or {}).get(i, 0))
            for i in range(len(predictions))]
    for r, p in zip(reqs, predictions, strict=True):
        r.predicted_output_tokens = p
    return reqs


def _order(policy, reqs):
    queue = policy.make_queue()
    for r in reqs:
        queue.add(r)
    return [queue.pop().request_id for _ in reqs]


# ---- the policy ---------------------------------------------------------------------------

def test_shorts_run_first_in_arrival_order_then_longs_by_predicted_size():
    # r0 long 900, r1 short, r2 long 50 (long though small: its class wins), r3 no
    # prediction (short), r4 short, r5 long 300
    reqs = _requests([900.0, SHORT_PREDICTION, 50.0, None, SHORT_PREDICTION, 300.0])
    assert _order(make_policy("skippredict"), reqs) == ["r1", "r3", "r4", "r2", "r5", "r0"]


def test_priority_comes_before_the_classes_and_victims_are_the_largest_long():
    policy = make_policy("skippredict")
    reqs = _requests([SHORT_PREDICTION, 10.0, SHORT_PREDICTION], priorities={0: 1})
    assert _order(policy, reqs) == ["r2", "r1", "r0"]
    short, small, large = _requests([SHORT_PREDICTION, 20.0, 5000.0])
    assert max([short, small, large], key=lambda r: policy.victim_key(r, 0.0)) is large
    assert not policy.should_preempt(short, large, 0.0)  # not preemptive by default
    eager = make_policy("skippredict", preemptive=True)
    assert eager.should_preempt(short, large, 0.0) and not eager.should_preempt(large, short, 0.0)


def test_aging_lets_an_old_long_pass_a_newer_smaller_long_but_never_a_short():
    old_long, new_short, new_long = _requests([1000.0, SHORT_PREDICTION, 400.0])
    new_short.arrival_s = new_long.arrival_s = 100.0
    aged = make_policy("skippredict", aging_tokens_per_s=10.0)  # 100 s forgive 1000 tokens
    assert _order(aged, [old_long, new_short, new_long]) == ["r1", "r0", "r2"]
    assert _order(make_policy("skippredict"), [old_long, new_short, new_long]) == ["r1", "r2", "r0"]


@pytest.mark.parametrize(("params", "named"), [
    ({"aging_tokens_per_s": 0}, "aging_tokens_per_s"),
    ({"aging_tokens_per_s": float("nan")}, "aging_tokens_per_s"),
    ({"preemptive": "yes"}, "preemptive"),
    ({"threshold_tokens": 10}, "threshold_tokens"),  # the predictor's, not the policy's
])
def test_bad_policy_parameters_name_the_parameter(params, named):
    with pytest.raises(ValueError, match=named):
        make_policy("skippredict", **params)


def test_the_gateway_tier_takes_it_and_it_reads_predictions():
    assert "skippredict" in PREDICTIVE_POLICIES
    policy = make_policy("skippredict")
    assert policy.requires_engine is None and gateway_refusal(policy) is None
    queue = GatewayQueue(policy)
    for r in _requests([700.0, SHORT_PREDICTION, 80.0]):
        queue.add(r)
    assert [queue.pop(0.0).request_id for _ in range(3)] == ["r1", "r2", "r0"]


def test_live_settings_take_the_learned_predictor_and_refuse_the_oracle():
    SchedulerSettings(policy="skippredict", predictor="skip_learned")
    with pytest.raises(ValueError, match="only the simulator"):
        SchedulerSettings(policy="skippredict", predictor="skip_oracle")


# ---- the predictors -----------------------------------------------------------------------

def test_the_oracle_skips_the_size_of_shorts_and_gives_it_for_longs():
    p = make_predictor("skip_oracle", threshold_tokens=100)
    assert p.predict(FEATURES, 99) == SHORT_PREDICTION
    assert p.predict(FEATURES, 100) == 100.0
    assert p.predict(FEATURES, None) is None
    always = make_predictor("skip_oracle", threshold_tokens=0, cheap_error_rate=1.0)
    assert always.predict(FEATURES, 0) == 1.0  # every request long, never flipped; >= 1
    assert always.prediction_cost_s(1.0) == 0.0


def test_the_oracle_bit_is_wrong_at_its_error_rate_and_seeded():
    def shorts(seed):
        p = SkipOraclePredictor(threshold_tokens=100, cheap_error_rate=0.2, seed=seed)
        return [p.predict(FEATURES, 10) == SHORT_PREDICTION for _ in range(2000)]
    first = shorts(3)
    assert first == shorts(3) and first != shorts(4)
    assert 0.75 < sum(first) / len(first) < 0.85


def test_the_learned_predictor_reads_features_not_the_truth():
    # log1p(tokens) = 0.9 * log1p(prompt): a prompt of 1000 predicts ~500 tokens
    p = make_predictor("skip_learned", weights={"log_prompt": 0.9}, threshold_tokens=256)
    big, small = RequestFeatures(num_prompt_tokens=1000), RequestFeatures(num_prompt_tokens=50)
    assert p.predict(big, 1) == p.predict(big, None) > 256
    assert p.predict(small, 10_000) == SHORT_PREDICTION
    assert not p.is_oracle


@pytest.mark.parametrize(("name", "params", "named"), [
    ("skip_oracle", {"threshold_tokens": -1}, "threshold_tokens"),
    ("skip_oracle", {"cheap_cost_s": float("nan")}, "cheap_cost_s"),
    ("skip_oracle", {"expensive_cost_s": -0.1}, "expensive_cost_s"),
    ("skip_oracle", {"cost_mode": "gpu"}, "cost_mode"),
    ("skip_oracle", {"cheap_error_rate": 1.5}, "cheap_error_rate"),
    ("skip_oracle", {"expensive_kendall_tau": 2}, "expensive_kendall_tau"),
    ("skip_learned", {"kind": "rank"}, "kind"),
    ("skip_learned", {"weights": {"nope": 1.0}}, "nope"),
    ("skip_learned", {"threshold": 5}, "threshold_tokens"),  # the valid names are listed
])
def test_bad_predictor_parameters_name_the_parameter(name, params, named):
    with pytest.raises(ValueError, match=named):
        make_predictor(name, **params)


def test_prediction_cost_is_cheap_for_all_and_expensive_for_longs_only():
    p = make_predictor("skip_oracle", cheap_cost_s=0.1, expensive_cost_s=2.0, cost_mode="server")
    assert prediction_cost(p, SHORT_PREDICTION) == PredictionCost(server_s=0.1)
    assert prediction_cost(p, 500.0) == PredictionCost(server_s=2.1)
    ext = replace(p, cost_mode="external")
    assert prediction_cost(ext, 500.0) == PredictionCost(external_s=2.1)
    assert prediction_cost(make_predictor("oracle"), 500.0) is NO_COST  # costs nothing


# ---- in the simulator ---------------------------------------------------------------------

def _sim(specs, **params):
    config = SimConfig(policy="skippredict", predictor="skip_oracle",
                       predictor_params={"threshold_tokens": 100} | params)
    return {r.request_id: r for r in simulate(config, specs).records}


def test_external_cost_delays_the_request_by_its_predictions_alone():
    specs = [make_spec("short", num_output_tokens=20), make_spec("long", num_output_tokens=400,
                                                                  arrival_s=30.0)]
    free = _sim(specs)
    paid = _sim(specs, cheap_cost_s=0.25, expensive_cost_s=1.5)
    assert paid["short"].arrival_s == 0.0  # response time is still from the arrival
    assert paid["short"].e2e_s == pytest.approx(free["short"].e2e_s + 0.25, abs=1e-9)
    assert paid["long"].e2e_s == pytest.approx(free["long"].e2e_s + 1.75, abs=1e-9)
    assert paid["long"].first_scheduled_s == pytest.approx(31.75)


def test_server_cost_holds_the_replica_and_delays_what_it_serves():
    # a long request decodes; a second arrives mid-way: its predictions hold the replica
    specs = [make_spec("first", num_output_tokens=400),
             make_spec("second", num_output_tokens=20, arrival_s=1.0)]
    free = _sim(specs)
    paid = _sim(specs, cheap_cost_s=0.25, expensive_cost_s=1.5, cost_mode="server")
    # "first" pays its own (long: 1.75 s before its first step) and "second"'s cheap 0.25 s
    assert paid["first"].finish_s == pytest.approx(free["first"].finish_s + 2.0, abs=1e-6)
    assert paid["first"].first_scheduled_s == 0.0  # queued at once, held before computing


def test_server_cost_behind_a_gateway_tier_is_refused():
    config = SimConfig(policy="skippredict", predictor="skip_oracle", gateway_max_inflight=2,
                       predictor_params={"cheap_cost_s": 0.1, "cost_mode": "server"})
    with pytest.raises(ValueError, match="cost_mode"):
        simulate(config, [make_spec()])


def _mixed(n=200, rate=3.0):
    return poisson_specs(n, seed=5, rate=rate, outputs=(4, 10, 30, 600))


def test_skippredict_beats_fcfs_and_costly_always_predict_in_the_simulator():
    specs = _mixed()

    def mean(policy, **params):
        config = SimConfig(policy=policy, predictor="skip_oracle", predictor_params=params,
                           scheduler={"max_num_seqs": 8})
        return summarize(simulate(config, specs).records).e2e_s.mean

    fcfs = mean("fcfs")
    cost = {"expensive_cost_s": 0.05, "cost_mode": "server"}  # a quarter of requests are long
    skip = mean("skippredict", threshold_tokens=100, cheap_cost_s=0.005, **cost)
    always = mean("skippredict", threshold_tokens=0, **cost)
    free = mean("skippredict", threshold_tokens=0)
    assert free < skip < 0.9 * min(fcfs, always)


def test_the_gateway_tier_runs_it_with_an_external_cost():
    config = SimConfig(num_replicas=2, policy="fcfs", gateway_policy="skippredict",
                       gateway_max_inflight=2, predictor="skip_oracle",
                       predictor_params={"threshold_tokens": 100, "cheap_cost_s": 0.05,
                                         "expensive_cost_s": 0.5})
    run = simulate(config, _mixed(n=40, rate=3.0))
    assert len(run.records) == 40 and all(r.finish_reason is not None for r in run.records)
