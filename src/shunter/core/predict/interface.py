"""What a predictor may see, and the Predictor protocol.

A predictor turns what is known when a request arrives into a number that orders requests by
their (unknown) output length: a predicted number of output tokens (SJF), or any score whose
order is the predicted order of lengths (learning to rank). It sees `RequestFeatures`: the
prompt length, tenant, priority, the user's output cap, and the request's place in its session
(turn index, how much the prompt grew since the session's previous turn, which holds the
previous answer). It never sees the true output length, except an oracle (`is_oracle`), which
the simulator alone feeds with the trace's truth, and says so by its name.

`SessionTracker` derives the session features from arrivals alone (one per cluster/gateway);
`ArrivalPredictor` pairs it with a predictor: one prediction per request, when it arrives, the
same way in the simulator and the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from shunter.core.types import DEFAULT_TENANT

__all__ = ["NO_COST", "ArrivalFacts", "ArrivalPredictor", "CostedPredictor", "PredictionCost",
           "Predictor", "RequestFeatures", "SessionTracker", "charges_server_time",
           "prediction_cost"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFeatures:
    """Everything a predictor may use, all of it known when the request arrives."""

    num_prompt_tokens: int
    tenant: str = DEFAULT_TENANT
    priority: int = 0
    max_output_tokens: int | None = None
    turn_index: int = 0  # requests of the same session seen before this one
    prompt_growth_tokens: int | None = None  # prompt minus the session's previous prompt


class Predictor(Protocol):
    """Orders requests by their predicted output length."""

    name: str
    # Reads the true output length (simulator only, for upper bounds); nothing else may.
    is_oracle: bool

    def predict(self, features: RequestFeatures, true_output_tokens: int | None = None,
                ) -> float | None:
        """Predicted output tokens (or a score in the same order); None when it cannot tell."""
        ...


@dataclass(frozen=True, slots=True)
class PredictionCost:
    """Seconds one request's predictions cost: before it may be queued, and on its replica."""

    external_s: float = 0.0
    server_s: float = 0.0


NO_COST = PredictionCost()


@runtime_checkable
class CostedPredictor(Protocol):
    """A predictor whose predictions cost time (optional members of a `Predictor`; the
    simulator charges them, `core.predict.skip`): `cost_mode` "external" (a delay before the
    request may be queued) or "server" (time its replica spends before its next step)."""

    cost_mode: str
    cheap_cost_s: float
    expensive_cost_s: float

    def prediction_cost_s(self, prediction: float | None) -> float:
        """Seconds the predictions that gave `prediction` took."""
        ...


def prediction_cost(predictor: object, prediction: float | None) -> PredictionCost:
    """What `prediction` cost, and where it is charged; NO_COST for a predictor that is not a
    `CostedPredictor`."""
    if not isinstance(predictor, CostedPredictor):
        return NO_COST
    seconds = predictor.prediction_cost_s(prediction)
    if not seconds:
        return NO_COST
    if predictor.cost_mode == "server":
        return PredictionCost(server_s=seconds)
    return PredictionCost(external_s=seconds)


def charges_server_time(predictor: object) -> bool:
    """Whether `predictor`'s predictions may occupy the replica (cost_mode "server")."""
    return (isinstance(predictor, CostedPredictor) and predictor.cost_mode == "server"
            and (predictor.cheap_cost_s > 0 or predictor.expensive_cost_s > 0))


class ArrivalFacts(Protocol):
    """What an arriving request tells (a `Request` or a `RequestSpec` both do)."""

    @property
    def num_prompt_tokens(self) -> int: ...
    @property
    def tenant(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def max_output_tokens(self) -> int | None: ...
    @property
    def session_id(self) -> str | None: ...


@dataclass(slots=True)
class SessionTracker:
    """Turn index and prompt growth per session, from the requests seen so far."""

    _last: dict[str, tuple[int, int]] = field(default_factory=dict)  # session -> (turns, prompt)

    def features(self, request: ArrivalFacts) -> RequestFeatures:
        """The request's features; records it as its session's latest turn."""
        turn_index, growth = 0, None
        if request.session_id is not None:
            turns, prev_prompt = self._last.get(request.session_id, (0, 0))
            if turns:
                turn_index, growth = turns, request.num_prompt_tokens - prev_prompt
            self._last[request.session_id] = (turns + 1, request.num_prompt_tokens)
        return RequestFeatures(num_prompt_tokens=request.num_prompt_tokens, tenant=request.tenant,
                               priority=request.priority,
                               max_output_tokens=request.max_output_tokens,
                               turn_index=turn_index, prompt_growth_tokens=growth)


@dataclass(slots=True)
class ArrivalPredictor:
    """A predictor and the session history it reads: `predict` once per arriving request."""

    predictor: Predictor
    sessions: SessionTracker = field(default_factory=SessionTracker)

    def predict(self, request: ArrivalFacts, true_output_tokens: int | None = None
                ) -> float | None:
        """The request's predicted output length (records it as its session's latest turn).
        `true_output_tokens` reaches oracle predictors only (the simulator's truth)."""
        truth = true_output_tokens if self.predictor.is_oracle else None
        return self.predictor.predict(self.sessions.features(request), truth)
