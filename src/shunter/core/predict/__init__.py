"""Output-length predictors for length-aware policies (SJF, learning to rank)."""

from __future__ import annotations

from shunter.core.predict.interface import (
    ArrivalPredictor,
    Predictor,
    RequestFeatures,
    SessionTracker,
)
from shunter.core.predict.learned import FEATURE_NAMES, LearnedPredictor, feature_vector
from shunter.core.predict.oracle import (
    NoisyOraclePredictor,
    OraclePredictor,
    truth_probability_for_tau,
)
from shunter.core.predict.registry import PREDICTORS, make_predictor

__all__ = [
    "FEATURE_NAMES",
    "ArrivalPredictor",
    "PREDICTORS",
    "LearnedPredictor",
    "NoisyOraclePredictor",
    "OraclePredictor",
    "Predictor",
    "RequestFeatures",
    "SessionTracker",
    "feature_vector",
    "make_predictor",
    "truth_probability_for_tau",
]
