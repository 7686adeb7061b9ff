"""The Intelligent Router's trainable parts and its model file (`router/policies/intelligent.py`).

- `LengthModel`: the router's own response-length predictor, a ridge regression of
  log(1 + output tokens) on what a request tells at arrival (log prompt length and its square,
  turn index in its session, log prompt growth since the session's previous turn), with Duan's
  smearing factor so that the prediction is a mean, not a median (remaining work adds up means);
  fitted by `shunter train-router` (`cli/train_router.fit_length_model`, numpy: a router
  imports the standard library only).
  The paper fine-tunes a DistilBERT classifier over length buckets on the prompt text; a router
  here sees token counts only, so the features are counts (the same as the core's `learned`
  predictor, which a router may not import: routers see `core.types` only).
- `RouterModel`: the length model, the policy's weights over the per-instance features
  (`FEATURE_NAMES`, log-weights: the weights stay positive) and what it was trained for (LLM,
  GPU, cluster size). `save_model` / `load_model` write and read it as JSON; a missing file, a
  file of another format or version, or one trained for another model or cluster size is a
  ValueError naming the file and the mismatch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shunter.core.types import RequestSpec, check_number

__all__ = ["FEATURE_NAMES", "FORMAT", "FORMAT_VERSION", "LENGTH_FEATURES", "MAX_LOG_TOKENS",
           "LengthModel", "RouterModel", "SessionTurns", "length_features", "load_model",
           "save_model"]

FORMAT = "shunter-intelligent-router"
FORMAT_VERSION = 1
# Per candidate instance, all in seconds (see `intelligent.py`): the request's own latency
# there, then the delay it imposes on the instance's other requests (the mixing terms).
FEATURE_NAMES = ("queue_s", "prefill_s", "decode_s", "slot_s", "mix_prefill_s", "mix_decode_s",
                 "kv_s")
LENGTH_FEATURES = ("bias", "log_prompt", "log_prompt_sq", "turn", "has_growth", "log_growth")
MAX_TURN_FEATURE = 8  # turns past this look alike
MAX_LOG_TOKENS = 20.0  # exp(20) tokens: a guard against overflow on absurd weights


def length_features(num_prompt_tokens: int, turn_index: int, growth_tokens: int | None,
                    ) -> tuple[float, ...]:
    """The length model's inputs, in LENGTH_FEATURES order."""
    log_prompt = math.log1p(num_prompt_tokens)
    return (1.0, log_prompt, log_prompt * log_prompt, float(min(turn_index, MAX_TURN_FEATURE)),
            0.0 if growth_tokens is None else 1.0,
            0.0 if growth_tokens is None else math.log1p(max(growth_tokens, 0)))


@dataclass(slots=True)
class SessionTurns:
    """Turn index and prompt growth per session, from arrivals alone (bounded: oldest dropped)."""

    max_sessions: int = 100_000
    _last: dict[str, tuple[int, int]] = field(default_factory=dict)  # session -> (turns, prompt)

    def peek(self, request: RequestSpec) -> tuple[float, ...]:
        """`request`'s length features, recording nothing."""
        turn_index, growth = 0, None
        if request.session_id is not None:
            turns, prev = self._last.get(request.session_id, (0, 0))
            if turns:
                turn_index, growth = turns, request.num_prompt_tokens - prev
        return length_features(request.num_prompt_tokens, turn_index, growth)

    def features(self, request: RequestSpec) -> tuple[float, ...]:
        """`request`'s length features; records it as its session's latest turn."""
        features = self.peek(request)
        if request.session_id is not None:
            turns, _ = self._last.pop(request.session_id, (0, 0))
            self._last[request.session_id] = (turns + 1, request.num_prompt_tokens)
            if len(self._last) > self.max_sessions:
                del self._last[next(iter(self._last))]
        return features


@dataclass(frozen=True, slots=True)
class LengthModel:
    """Predicted mean output tokens = smear * exp(weights . features) - 1."""

    weights: tuple[float, ...]
    smear: float = 1.0

    def __post_init__(self) -> None:
        if len(self.weights) != len(LENGTH_FEATURES):
            raise ValueError(f"a length model needs {len(LENGTH_FEATURES)} weights "
                             f"({', '.join(LENGTH_FEATURES)}), got {len(self.weights)}")
        for name, w in zip(LENGTH_FEATURES, self.weights, strict=True):
            check_number(f"length weight {name!r}", w)
        check_number("smear", self.smear, gt=0)

    @classmethod
    def constant(cls, num_tokens: float) -> LengthModel:
        """A model that predicts `num_tokens` for every request (no training)."""
        return cls((math.log1p(num_tokens), 0.0, 0.0, 0.0, 0.0, 0.0))

    def predict(self, features: Sequence[float]) -> float:
        s = sum(w * x for w, x in zip(self.weights, features, strict=True))
        return max(1.0, self.smear * math.exp(min(s, MAX_LOG_TOKENS)) - 1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterModel:
    """What `shunter train-router` saves: predictor, policy weights, and what they fit."""

    length: LengthModel
    log_weights: tuple[float, ...] = (0.0,) * len(FEATURE_NAMES)  # 0: the heuristic
    model: str | None = None  # the LLM it was trained for
    gpu: str | None = None
    num_replicas: int | None = None
    info: dict[str, Any] = field(default_factory=dict)  # training facts, for people

    def __post_init__(self) -> None:
        if len(self.log_weights) != len(FEATURE_NAMES):
            raise ValueError(f"a router model needs {len(FEATURE_NAMES)} policy weights "
                             f"({', '.join(FEATURE_NAMES)}), got {len(self.log_weights)}")
        for name, w in zip(FEATURE_NAMES, self.log_weights, strict=True):
            check_number(f"policy log-weight {name!r}", w)

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(math.exp(w) for w in self.log_weights)


def save_model(model: RouterModel, path: str | Path) -> Path:
    """Write `model` as JSON (`FORMAT`, `FORMAT_VERSION`)."""
    p = Path(path)
    p.write_text(json.dumps({
        "format": FORMAT, "version": FORMAT_VERSION, "model": model.model, "gpu": model.gpu,
        "num_replicas": model.num_replicas,
        "length": {"features": list(LENGTH_FEATURES), "weights": list(model.length.weights),
                   "smear": model.length.smear},
        "policy": {"features": list(FEATURE_NAMES), "log_weights": list(model.log_weights)},
        "info": model.info}, indent=1, sort_keys=True))
    return p


def load_model(path: str | Path, *, model: str | None = None, num_replicas: int | None = None,
               ) -> RouterModel:
    """The model in `path`; ValueError naming the file when it is missing or unreadable, of
    another format or version, or trained for another LLM (`model`) or cluster size."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read intelligent router model {path}: "
                         f"{exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON ({exc}); write one with `shunter train-router`"
                         ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an intelligent router model (no \"format\": "
                         f"\"{FORMAT}\"); write one with `shunter train-router`")
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} is an intelligent router model of format version "
                         f"{data.get('version')!r}; this Shunter reads version {FORMAT_VERSION} "
                         "(train it again with `shunter train-router`)")
    try:
        if tuple(data["length"]["features"]) != LENGTH_FEATURES or tuple(
                data["policy"]["features"]) != FEATURE_NAMES:
            raise ValueError("its feature names differ from this Shunter's")
        loaded = RouterModel(
            length=LengthModel(tuple(data["length"]["weights"]), data["length"]["smear"]),
            log_weights=tuple(data["policy"]["log_weights"]), model=data.get("model"),
            gpu=data.get("gpu"), num_replicas=data.get("num_replicas"),
            info=data.get("info") or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is a damaged intelligent router model "
                         f"({type(exc).__name__}: {exc})") from None
    if model is not None and loaded.model is not None and model != loaded.model:
        raise ValueError(f"{path} was trained for model {loaded.model!r}, not {model!r}; "
                         "train one for this model with `shunter train-router --model`")
    if num_replicas is not None and loaded.num_replicas is not None \
            and num_replicas != loaded.num_replicas:
        raise ValueError(f"{path} was trained for {loaded.num_replicas} replicas, not "
                         f"{num_replicas}; train one for this cluster with `shunter train-router "
                         "--replicas`")
    return loaded
