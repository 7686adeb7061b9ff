"""Fitting the learned predictor: it recovers a planted ranking signal, generalises to held-out
sessions, and its JSON round trip gives the same predictions."""

import math
import random

import pytest

from shunter.core.predict import SessionTracker
from shunter.core.types import RequestSpec
from shunter.workload.rank_training import (
    fit_length_model,
    fit_rank_model,
    kendall_tau,
    load_model,
    save_model,
    split_by_session,
)


def planted(n: int, seed: int) -> list[RequestSpec]:
    """Output length grows with the prompt and depends on the tenant, with noise."""
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        prompt = int(math.exp(rng.uniform(2, 8)))
        tenant = rng.choice(["chatty", "terse"])
        mean = 0.5 * math.log(prompt) + (2.0 if tenant == "chatty" else 0.0)
        out = max(1, int(math.exp(mean + rng.gauss(0, 0.5))))
        specs.append(RequestSpec(request_id=f"r{i}", arrival_s=float(i), num_prompt_tokens=prompt,
                                 num_output_tokens=out, tenant=tenant))
    return specs


def held_out_tau(model, specs) -> float:
    tracker = SessionTracker()
    return kendall_tau([model.predict(tracker.features(s)) for s in specs],
                       [s.num_output_tokens for s in specs])


@pytest.mark.parametrize("fit", [fit_length_model, fit_rank_model])
def test_fits_recover_a_planted_signal_on_held_out_requests(fit):
    train, test = split_by_session(planted(3000, seed=1), 0.7)
    model = fit(train)
    assert model.tenant_bias["chatty"] - model.tenant_bias["terse"] > 1.0
    assert held_out_tau(model, test) > 0.45


def test_split_keeps_sessions_whole_and_is_seeded():
    specs = [RequestSpec(request_id=f"r{i}", arrival_s=float(i), num_prompt_tokens=5,
                         num_output_tokens=5, session_id=f"s{i // 3}") for i in range(300)]
    train, test = split_by_session(specs, 0.5, seed=3)
    assert {s.session_id for s in train}.isdisjoint({s.session_id for s in test})
    assert split_by_session(specs, 0.5, seed=3) == (train, test)


def test_saved_model_loads_into_the_same_predictor(tmp_path):
    from shunter.core.predict import make_predictor
    model = fit_rank_model(planted(500, seed=2), num_pairs=5000, num_steps=50)
    params = load_model(save_model(model, tmp_path / "m.json"))
    again = make_predictor("learned", **params)
    tracker_a, tracker_b = SessionTracker(), SessionTracker()
    for s in planted(50, seed=3):
        assert again.predict(tracker_a.features(s)) == pytest.approx(model.predict(tracker_b.features(s)))
