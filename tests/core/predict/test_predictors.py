"""Predictors: the oracle, the noisy oracle's achieved Kendall tau, session features, the
learned model applied in plain Python, and the registry."""

import math
import random

import pytest
from tests.factories import make_spec

from shunter.core.predict import (
    LearnedPredictor,
    NoisyOraclePredictor,
    RequestFeatures,
    SessionTracker,
    make_predictor,
    truth_probability_for_tau,
)
from shunter.workload.rank_training import kendall_tau


def test_oracle_returns_the_truth_and_nothing_without_it():
    p = make_predictor("oracle")
    f = RequestFeatures(num_prompt_tokens=10)
    assert p.is_oracle and p.predict(f, 42) == 42.0 and p.predict(f) is None


def test_truth_probability_spans_zero_to_one():
    assert truth_probability_for_tau(0.0) == 0.0 and truth_probability_for_tau(1.0) == 1.0


@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
def test_noisy_oracle_achieves_the_target_kendall_tau(target):
    rng = random.Random(7)
    truth = [max(1, int(math.exp(rng.gauss(5.0, 1.2)))) for _ in range(3000)]
    p = NoisyOraclePredictor(kendall_tau=target, seed=1)
    f = RequestFeatures(num_prompt_tokens=10)
    preds = [p.predict(f, t) for t in truth]
    assert kendall_tau(preds[100:], truth[100:]) == pytest.approx(target, abs=0.05)


def test_noisy_oracle_is_seeded_and_validated():
    f = RequestFeatures(num_prompt_tokens=10)
    runs = [[NoisyOraclePredictor(kendall_tau=0.3, seed=5).predict(f, n) for n in range(1, 200)]
            for _ in range(2)]
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match="kendall_tau"):
        NoisyOraclePredictor(kendall_tau=1.5)


def test_kendall_tau_by_hand():
    assert kendall_tau([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # pairs (1,2) concordant, (1,3) concordant, (2,3) discordant: (2 - 1) / 3
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_session_tracker_counts_turns_and_prompt_growth_from_arrivals_only():
    t = SessionTracker()
    a0 = t.features(make_spec("a0", num_prompt_tokens=100, session_id="a"))
    b0 = t.features(make_spec("b0", num_prompt_tokens=50, session_id="b"))
    a1 = t.features(make_spec("a1", num_prompt_tokens=260, session_id="a"))
    lone = t.features(make_spec("x", num_prompt_tokens=7))
    assert (a0.turn_index, a0.prompt_growth_tokens) == (0, None)
    assert (b0.turn_index, a1.turn_index, a1.prompt_growth_tokens) == (0, 1, 160)
    assert (lone.turn_index, lone.prompt_growth_tokens) == (0, None)


def test_learned_predictor_applies_its_weights_in_plain_python():
    p = LearnedPredictor(weights={"bias": 1.0, "log_prompt": 0.5}, tenant_bias={"t1": 2.0})
    f = RequestFeatures(num_prompt_tokens=99, tenant="t1")
    assert p.score(f) == pytest.approx(1.0 + 0.5 * math.log(100) + 2.0)
    assert p.predict(f) == pytest.approx(math.expm1(p.score(f)))
    rank = LearnedPredictor(weights={"log_prompt": -1.0}, kind="rank")
    assert rank.predict(f) == pytest.approx(-math.log(100))
    with pytest.raises(ValueError, match="unknown features"):
        LearnedPredictor(weights={"nope": 1.0})


def test_registry_names_the_valid_predictors():
    with pytest.raises(ValueError, match="learned, noisy_oracle, oracle"):
        make_predictor("psychic")
    with pytest.raises(ValueError, match="bad parameters"):
        make_predictor("oracle", tau=1)
