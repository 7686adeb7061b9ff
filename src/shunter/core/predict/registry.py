"""Output-length predictors by name: one line per predictor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shunter.core.predict.interface import Predictor
from shunter.core.predict.learned import LearnedPredictor
from shunter.core.predict.oracle import NoisyOraclePredictor, OraclePredictor
from shunter.core.predict.skip import SkipLearnedPredictor, SkipOraclePredictor
from shunter.core.types import make_from_registry

__all__ = ["PREDICTORS", "make_predictor"]

PREDICTORS: dict[str, Callable[..., Predictor]] = {
    "learned": LearnedPredictor,
    "noisy_oracle": NoisyOraclePredictor,
    "oracle": OraclePredictor,
    "skip_learned": SkipLearnedPredictor,
    "skip_oracle": SkipOraclePredictor,
}


def make_predictor(name: str, **params: Any) -> Predictor:
    """Build the named predictor; unknown names and parameters raise ValueError naming the valid ones."""
    return make_from_registry("predictor", PREDICTORS, name, params)
