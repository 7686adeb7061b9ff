"""Fit the learned output-length predictor on a trace (numpy; the fitted model is plain numbers).

The features are `shunter.core.predict.learned.feature_vector` of what each request tells at
arrival (prompt length, turn index and prompt growth within its session), plus one bias column
per tenant with at least `min_tenant_requests` training requests. Two fits:

- `fit_length_model`: ridge regression of log(1 + output tokens), a pointwise length predictor;
- `fit_rank_model`: pairwise logistic (RankNet) loss over random request pairs with different
  output lengths, full-batch gradient descent from the ridge solution; only the order of its
  scores means anything, which is what learning to rank asks of a predictor.

Train on one part of a trace and evaluate on another (`split_by_session` keeps a conversation's
turns together), and measure the ranking with `kendall_tau` (tau-b, with ties).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shunter.core.predict.interface import Predictor, SessionTracker
from shunter.core.predict.learned import FEATURE_NAMES, LearnedPredictor, feature_vector
from shunter.core.predict.registry import make_predictor
from shunter.core.types import RequestSpec
from shunter.errors import ConfigError

__all__ = [
    "build_predictor",
    "design_matrix",
    "fit_length_model",
    "fit_rank_model",
    "kendall_tau",
    "load_model",
    "save_model",
    "split_by_session",
]

MIN_TENANT_REQUESTS = 20
_PAIR_CHUNK = 2048


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b between two equally long sequences (O(n^2) in chunks; fine to ~20k)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.size < 2:
        raise ValueError("kendall_tau needs two sequences of the same length >= 2")
    concordant = tied_a = tied_b = total = 0.0
    for start in range(0, a.size, _PAIR_CHUNK):
        da = np.sign(a[start:start + _PAIR_CHUNK, None] - a[None, :])
        db = np.sign(b[start:start + _PAIR_CHUNK, None] - b[None, :])
        concordant += float((da * db).sum())
        tied_a += float((da == 0).sum())
        tied_b += float((db == 0).sum())
        total += da.size
    # every pair was counted twice and each element once with itself (a tie in both)
    n_pairs = total - a.size
    denom = np.sqrt((n_pairs - (tied_a - a.size)) * (n_pairs - (tied_b - a.size)))
    return float(concordant / denom) if denom > 0 else 0.0


def split_by_session(specs: Sequence[RequestSpec], train_fraction: float, seed: int = 0,
                     ) -> tuple[list[RequestSpec], list[RequestSpec]]:
    """Split requests into train and test, keeping each session (or lone request) on one side."""
    train, test = [], []
    for spec in specs:
        key = spec.session_id if spec.session_id is not None else spec.request_id
        h = zlib.crc32(f"{seed}:{key}".encode()) / 2**32
        (train if h < train_fraction else test).append(spec)
    return train, test


def design_matrix(specs: Sequence[RequestSpec], tenants: Sequence[str]) -> np.ndarray:
    """One row per request (in arrival order): the core features, then tenant indicators."""
    tracker = SessionTracker()
    column = {t: i for i, t in enumerate(tenants)}
    x = np.zeros((len(specs), len(FEATURE_NAMES) + len(tenants)))
    for row, spec in enumerate(specs):
        x[row, :len(FEATURE_NAMES)] = feature_vector(tracker.features(spec))
        j = column.get(spec.tenant)
        if j is not None:
            x[row, len(FEATURE_NAMES) + j] = 1.0
    return x


def _tenants(specs: Sequence[RequestSpec], min_requests: int) -> list[str]:
    counts: dict[str, int] = {}
    for spec in specs:
        counts[spec.tenant] = counts.get(spec.tenant, 0) + 1
    frequent = sorted(t for t, n in counts.items() if n >= min_requests)
    return frequent if len(frequent) > 1 else []  # one tenant: the bias column says nothing


def _ridge(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    xs = x / scale
    penalty = l2 * len(y) * np.eye(x.shape[1])
    penalty[0, 0] = 0.0  # no shrinkage of the intercept
    return np.linalg.solve(xs.T @ xs + penalty, xs.T @ y) / scale


def _to_predictor(w: np.ndarray, tenants: Sequence[str], kind: str) -> LearnedPredictor:
    k = len(FEATURE_NAMES)
    return LearnedPredictor(weights={n: float(v) for n, v in zip(FEATURE_NAMES, w[:k], strict=True)},
                            tenant_bias={t: float(v) for t, v in zip(tenants, w[k:], strict=True)},
                            kind=kind)


def fit_length_model(specs: Sequence[RequestSpec], *, l2: float = 1e-4,
                     min_tenant_requests: int = MIN_TENANT_REQUESTS) -> LearnedPredictor:
    """Ridge regression of log(1 + output tokens) on the arrival features."""
    tenants = _tenants(specs, min_tenant_requests)
    x = design_matrix(specs, tenants)
    y = np.log1p([s.num_output_tokens for s in specs])
    return _to_predictor(_ridge(x, y, l2), tenants, "length")


def fit_rank_model(specs: Sequence[RequestSpec], *, seed: int = 0, num_pairs: int = 50_000,
                   num_steps: int = 200, learning_rate: float = 0.5, l2: float = 1e-4,
                   min_tenant_requests: int = MIN_TENANT_REQUESTS) -> LearnedPredictor:
    """Pairwise logistic ranking loss, minimised by full-batch gradient descent (Adam-free)."""
    tenants = _tenants(specs, min_tenant_requests)
    x = design_matrix(specs, tenants)
    y = np.asarray([s.num_output_tokens for s in specs], dtype=np.float64)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(len(y), size=(2, num_pairs))
    keep = y[i] != y[j]
    i, j = i[keep], j[keep]
    sign = np.sign(y[i] - y[j])  # +1: i is longer, so its score should be larger
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    xs = x / scale
    diff = xs[i] - xs[j]
    w = _ridge(x, np.log1p(y), l2) * scale  # start from the pointwise fit, in scaled units
    for _ in range(num_steps):
        margin = sign * (diff @ w)
        grad_coef = -sign / (1.0 + np.exp(np.clip(margin, -30, 30)))
        grad = diff.T @ grad_coef / len(sign) + l2 * w
        grad[0] = 0.0  # the intercept cancels in every pair
        w -= learning_rate * grad
    return _to_predictor(w / scale, tenants, "rank")


def save_model(predictor: LearnedPredictor, path: str | Path) -> Path:
    """Write the model as JSON: {"kind", "weights", "tenant_bias"} (make_predictor's params)."""
    p = Path(path)
    p.write_text(json.dumps({"kind": predictor.kind, "weights": dict(predictor.weights),
                             "tenant_bias": dict(predictor.tenant_bias)}, indent=1, sort_keys=True))
    return p


def load_model(path: str | Path) -> dict[str, Any]:
    """The `learned` predictor's parameters from a file written by `save_model`."""
    try:
        data = json.loads(Path(path).read_text())
        return {"kind": data["kind"], "weights": data["weights"],
                "tenant_bias": data.get("tenant_bias", {})}
    except OSError as exc:
        raise ConfigError(f"cannot read predictor model {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a predictor model written by `shunter "
                          f"train-predictor` ({type(exc).__name__}: {exc})") from None


def build_predictor(name: str, params: dict[str, Any]) -> Predictor:
    """The named predictor; a `model_path` parameter is read with `load_model` (one place for
    the simulator and the live gateway). Bad names and parameters raise ValueError."""
    params = dict(params)
    if "model_path" in params:
        params.update(load_model(params.pop("model_path")))
    return make_predictor(name, **params)
