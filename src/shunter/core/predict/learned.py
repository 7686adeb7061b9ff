"""A learned predictor applied in plain Python: a linear model over arrival-time features.

The model is fitted outside the core (`shunter.workload.rank_training`, numpy) on a trace's
requests and handed in as plain numbers, so the core stays stdlib-only. Features, all known at
arrival (`RequestFeatures`): log prompt length and its square, the turn index in the session,
and the log of how much the prompt grew since the session's previous turn (which contains the
previous answer), plus one bias per tenant (a tenant seen in training; unseen tenants get 0).

`kind="length"`: fitted pointwise to log(1 + output tokens); predicts output tokens.
`kind="rank"`: fitted pairwise (RankNet-style logistic loss over request pairs, as learning to
rank does); predicts a score whose order is the predicted order of lengths, nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from shunter.core.predict.interface import RequestFeatures
from shunter.core.types import check_number

__all__ = ["FEATURE_NAMES", "LearnedPredictor", "feature_vector"]

FEATURE_NAMES = ("bias", "log_prompt", "log_prompt_sq", "turn", "has_growth", "log_growth")
MAX_TURN_FEATURE = 8  # turns past this look alike
MODEL_KINDS = ("length", "rank")


def feature_vector(f: RequestFeatures) -> tuple[float, ...]:
    """The model's inputs, in FEATURE_NAMES order (the trainer uses the same function)."""
    log_prompt = math.log1p(f.num_prompt_tokens)
    growth = f.prompt_growth_tokens
    return (1.0, log_prompt, log_prompt * log_prompt, float(min(f.turn_index, MAX_TURN_FEATURE)),
            0.0 if growth is None else 1.0, 0.0 if growth is None else math.log1p(max(growth, 0)))


@dataclass(slots=True)
class LearnedPredictor:
    weights: Mapping[str, float] = field(default_factory=dict)
    tenant_bias: Mapping[str, float] = field(default_factory=dict)
    kind: str = "length"
    name: str = "learned"
    is_oracle: bool = False
    _w: tuple[float, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; valid: {', '.join(FEATURE_NAMES)}")
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        for name, weight in self.weights.items():
            check_number(f"weight {name!r}", weight)
        for tenant, bias in self.tenant_bias.items():
            check_number(f"tenant_bias {tenant!r}", bias)
        self._w = tuple(float(self.weights.get(name, 0.0)) for name in FEATURE_NAMES)

    def score(self, features: RequestFeatures) -> float:
        """The linear score: log(1 + tokens) for a length model, a rank score otherwise."""
        x = feature_vector(features)
        return sum(w * v for w, v in zip(self._w, x, strict=True)) + self.tenant_bias.get(
            features.tenant, 0.0)

    def predict(self, features: RequestFeatures, true_output_tokens: int | None = None,
                ) -> float | None:
        s = self.score(features)
        if self.kind == "rank":
            return s
        return math.expm1(min(s, 30.0))  # a guard against overflow on absurd inputs
