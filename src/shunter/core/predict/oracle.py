"""Oracle predictors: the true output length, exactly or with a chosen rank correlation.

Only the simulator can run these (it knows the trace's lengths); they bound what a real
predictor could achieve. `NoisyOraclePredictor` degrades the truth to a target Kendall tau
without assuming any length distribution: each prediction is the true length with probability
p, else a length drawn from the true lengths seen so far (a seeded reservoir). For continuous
lengths a pair of requests is then concordant on average by p^2 (both true) + 2p(1-p)/3 (one
true: the true one is the extreme of three i.i.d. draws with probability 2/3, giving a net
1/3) + 0 (neither), so tau = p^2 + 2p(1-p)/3, i.e. p = sqrt(1 + 3 tau) - 1. Ties in integer
lengths pull the achieved tau-b slightly off; the tests measure it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from shunter.core.predict.interface import RequestFeatures

__all__ = ["NoisyOraclePredictor", "OraclePredictor", "truth_probability_for_tau"]

RESERVOIR_SIZE = 4096  # true lengths kept to draw the noise from


def truth_probability_for_tau(kendall_tau: float) -> float:
    """The chance of predicting the truth that gives `kendall_tau` (see the module docstring)."""
    return math.sqrt(1.0 + 3.0 * kendall_tau) - 1.0


@dataclass(slots=True)
class OraclePredictor:
    name: str = "oracle"
    is_oracle: bool = True

    def predict(self, features: RequestFeatures, true_output_tokens: int | None = None,
                ) -> float | None:
        return None if true_output_tokens is None else float(true_output_tokens)


@dataclass(slots=True)
class NoisyOraclePredictor:
    kendall_tau: float = 0.5
    seed: int = 0
    name: str = "noisy_oracle"
    is_oracle: bool = True
    _rng: random.Random = field(init=False, repr=False)
    _p_truth: float = field(init=False, repr=False)
    _seen: list[int] = field(init=False, repr=False, default_factory=list)
    _num_seen: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.kendall_tau <= 1.0:
            raise ValueError(f"kendall_tau must be in [0, 1], got {self.kendall_tau}")
        self._rng = random.Random(self.seed)
        self._p_truth = truth_probability_for_tau(self.kendall_tau)

    def predict(self, features: RequestFeatures, true_output_tokens: int | None = None,
                ) -> float | None:
        if true_output_tokens is None:
            return None
        rng = self._rng
        guess = true_output_tokens
        if self._seen and rng.random() >= self._p_truth:
            guess = self._seen[rng.randrange(len(self._seen))]
        self._remember(true_output_tokens)
        return float(guess)

    def _remember(self, num_tokens: int) -> None:
        """Reservoir sampling (Algorithm R) over every true length seen."""
        self._num_seen += 1
        if len(self._seen) < RESERVOIR_SIZE:
            self._seen.append(num_tokens)
            return
        j = self._rng.randrange(self._num_seen)
        if j < RESERVOIR_SIZE:
            self._seen[j] = num_tokens
