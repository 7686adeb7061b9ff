"""Output-length predictors by name: one line per predictor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shunter.core.predict.interface import Predictor
from shunter.core.predict.learned import LearnedPredictor
from shunter.core.predict.oracle import NoisyOraclePredictor, OraclePredictor

__all__ = ["PREDICTORS", "make_predictor"]

PREDICTORS: dict[str, Callable[..., Predictor]] = {
    "learned": LearnedPredictor,
    "noisy_oracle": NoisyOraclePredictor,
    "oracle": OraclePredictor,
}


def make_predictor(name: str, **params: Any) -> Predictor:
    """Build the named predictor; unknown names and parameters raise ValueError naming the valid ones."""
    factory = PREDICTORS.get(name)
    if factory is None:
        raise ValueError(f"unknown predictor {name!r}; valid: {', '.join(sorted(PREDICTORS))}")
    try:
        return factory(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for predictor {name!r}: {exc}") from None
