"""SkipPredict's two predictions, and what predicting costs (Shahout & Mitzenmacher,
"SkipPredict: When to Invest in Predictions for Scheduling", 2024).

Every request gets a cheap one-bit prediction: is its output shorter than `threshold_tokens`?
Only the requests it calls long get the expensive prediction, their size in output tokens.
The result is one number in `Request.predicted_output_tokens`, read by the `skippredict`
policy: `SHORT_PREDICTION` (0.0) for a predicted-short request (its size was never predicted:
"short" ranks below every size), else the expensive prediction, at least `MIN_LONG_PREDICTION`.

Predicting costs time, charged where the paper charges it (`cost_mode`):
- "external": the predictor runs outside the replica (another process or machine); the request
  becomes schedulable `cost` seconds after it arrives, and its response time, measured from its
  arrival, includes that wait. (The paper adds a fixed cost to the response time; ours also lets
  the wait shift when the request joins the queue.)
- "server": the prediction runs on the replica that serves the request and holds it: its next
  step starts `cost` seconds later, delaying every request it serves (the paper's "server time
  cost": predictions are scheduled on the same server as the jobs). Ours: a batching replica
  predicts between steps, ahead of the next one, and the step's batch is chosen when the hold
  begins (a request arriving during the hold waits for the step after). Simulated on plain
  replicas only (not behind the simulated gateway tier or in disaggregated pools: refused).
The cost of a request is `cheap_cost_s`, plus `expensive_cost_s` if it was called long.
`threshold_tokens=0` is the always-predict baseline: no cheap prediction is made (or charged,
or wrong), every request gets the expensive one.

Costs are charged by the simulator (`core.predict.interface.prediction_cost`: these
predictors are `CostedPredictor`s). Live (engine, gateway) the cost of a
prediction is whatever computing it takes in the request path, measured as it happens; the
configured `*_cost_s` are a simulator model and are not added there.

`skip_oracle` reads the trace's truth (simulator only): the bit is wrong with probability
`cheap_error_rate`, the size is exact or degraded to `expensive_kendall_tau` (as
`noisy_oracle`). `skip_learned` runs on what a live request has (`RequestFeatures`): one linear
length model (as `learned`, e.g. from `shunter train-predictor --kind length`) gives the bit
(its prediction against the threshold) and the size. Ours, where the paper is silent: the
predictors themselves (the paper studies given prediction quality, not models).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from shunter.core.predict.interface import RequestFeatures
from shunter.core.predict.learned import LearnedPredictor
from shunter.core.predict.oracle import NoisyOraclePredictor
from shunter.core.types import check_number

__all__ = ["COST_MODES", "MIN_LONG_PREDICTION", "SHORT_PREDICTION", "SkipLearnedPredictor",
           "SkipOraclePredictor"]

SHORT_PREDICTION = 0.0  # the cheap prediction said short: no size was predicted
MIN_LONG_PREDICTION = 1.0  # a long request's size never reads as "short"
COST_MODES = ("external", "server")
DEFAULT_THRESHOLD_TOKENS = 256.0  # roughly a chat answer's median length


def _check_common(threshold_tokens: float, cheap_cost_s: float, expensive_cost_s: float,
                  cost_mode: str) -> None:
    check_number("threshold_tokens", threshold_tokens, ge=0)
    check_number("cheap_cost_s", cheap_cost_s, ge=0)
    check_number("expensive_cost_s", expensive_cost_s, ge=0)
    if cost_mode not in COST_MODES:
        raise ValueError(f"cost_mode must be one of {', '.join(COST_MODES)}, got {cost_mode!r}")


def _cost_s(prediction: float | None, threshold_tokens: float, cheap_cost_s: float,
            expensive_cost_s: float) -> float:
    if prediction is None:
        return 0.0  # nothing was predicted
    cheap_s = cheap_cost_s if threshold_tokens > 0 else 0.0  # always-predict skips the bit
    return cheap_s + (0.0 if prediction == SHORT_PREDICTION else expensive_cost_s)


def _long(size: float) -> float:
    return max(float(size), MIN_LONG_PREDICTION)


@dataclass(slots=True)
class SkipOraclePredictor:
    """The trace's truth behind both predictions (simulator only)."""

    threshold_tokens: float = DEFAULT_THRESHOLD_TOKENS
    cheap_error_rate: float = 0.0
    expensive_kendall_tau: float | None = None  # None: the exact size
    cheap_cost_s: float = 0.0
    expensive_cost_s: float = 0.0
    cost_mode: str = "external"
    seed: int = 0
    name: str = "skip_oracle"
    is_oracle: bool = True
    _rng: random.Random = field(init=False, repr=False)
    _size: NoisyOraclePredictor | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        _check_common(self.threshold_tokens, self.cheap_cost_s, self.expensive_cost_s,
                      self.cost_mode)
        check_number("cheap_error_rate", self.cheap_error_rate, ge=0, le=1)
        self._rng = random.Random(self.seed)
        if self.expensive_kendall_tau is not None:
            check_number("expensive_kendall_tau", self.expensive_kendall_tau, ge=0, le=1)
            self._size = NoisyOraclePredictor(kendall_tau=self.expensive_kendall_tau,
                                              seed=self.seed + 1)

    def predict(self, features: RequestFeatures, true_output_tokens: int | None = None,
                ) -> float | None:
        if true_output_tokens is None:
            return None
        is_short = true_output_tokens < self.threshold_tokens
        if (self.threshold_tokens > 0 and self.cheap_error_rate
                and self._rng.random() < self.cheap_error_rate):
            is_short = not is_short
        if self._size is not None:  # it sees every length, so its noise is drawn from all
            size = self._size.predict(features, true_output_tokens)
        else:
            size = float(true_output_tokens)
        return SHORT_PREDICTION if is_short else _long(size if size is not None else 0.0)

    def prediction_cost_s(self, prediction: float | None) -> float:
        return _cost_s(prediction, self.threshold_tokens, self.cheap_cost_s,
                       self.expensive_cost_s)


@dataclass(slots=True)
class SkipLearnedPredictor:
    """A linear length model (`learned`, kind "length") behind both predictions."""

    weights: Mapping[str, float] = field(default_factory=dict)
    tenant_bias: Mapping[str, float] = field(default_factory=dict)
    kind: str = "length"  # what a `model_path` file says; a rank model has no tokens to threshold
    threshold_tokens: float = DEFAULT_THRESHOLD_TOKENS
    cheap_cost_s: float = 0.0
    expensive_cost_s: float = 0.0
    cost_mode: str = "external"
    name: str = "skip_learned"
    is_oracle: bool = False
    _model: LearnedPredictor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_common(self.threshold_tokens, self.cheap_cost_s, self.expensive_cost_s,
                      self.cost_mode)
        if self.kind != "length":
            raise ValueError(f"kind must be 'length' (a model of output tokens, to compare with "
                             f"threshold_tokens), got {self.kind!r}")
        self._model = LearnedPredictor(weights=self.weights, tenant_bias=self.tenant_bias)

    def predict(self, features: RequestFeatures, true_output_tokens: int | None = None,
                ) -> float | None:
        size = self._model.predict(features)
        assert size is not None, "a length model always predicts"
        return SHORT_PREDICTION if size < self.threshold_tokens else _long(size)

    def prediction_cost_s(self, prediction: float | None) -> float:
        return _cost_s(prediction, self.threshold_tokens, self.cheap_cost_s,
                       self.expensive_cost_s)
