"""Fitting the profile cost model: breakpoints, the feature matrix, non-negative least squares.

Kept apart from `profile` (the cost model and its file) because only `shunter profile` fits;
the simulator only evaluates. numpy only: Lawson-Hanson NNLS is ~30 lines, not worth scipy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shunter.core.types import StepShape
from shunter.errors import ConfigError

__all__ = ["choose_knots", "fit_coefficients", "nnls", "step_features"]

KNOT_GROWTH = 2  # consecutive breakpoints at least double: a few segments, each with data
_NUM_SCALAR_FEATURES = 4  # fixed, per prefill chunk, per prefill pair, per decode KV token

Coefficients = tuple[tuple[int, ...], tuple[float, ...], float, float, float, float]


def choose_knots(token_counts: Sequence[int]) -> tuple[int, ...]:
    """Breakpoints of base(num_tokens): measured counts, each >= KNOT_GROWTH x the previous,
    without the largest (the last segment runs on past it, so its slope is measured)."""
    kept: list[int] = []
    for n in sorted(set(token_counts)):
        if n > 0 and (not kept or n >= KNOT_GROWTH * kept[-1]):
            kept.append(n)
    return tuple(kept[:-1]) if len(kept) > 1 else tuple(kept)


def step_features(shape: StepShape, knots: Sequence[int]) -> list[float]:
    """One row of the design matrix: [1, chunks, pairs, decode KV, ramp per knot]."""
    n = shape.num_tokens
    pairs = sum(new * (ctx + new) for new, ctx in shape.prefill_chunks)
    row = [1.0, float(len(shape.prefill_chunks)), float(pairs),
           float(shape.num_decode_context_tokens)]
    for i, knot in enumerate(knots):
        width = knots[i + 1] - knot if i + 1 < len(knots) else None
        ramp = max(n - knot, 0)
        row.append(float(ramp if width is None else min(ramp, width)))
    return row


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """argmin ||a x - b|| subject to x >= 0 (Lawson and Hanson, 1974, chapter 23)."""
    num_cols = a.shape[1]
    x = np.zeros(num_cols)
    passive = np.zeros(num_cols, dtype=bool)
    tol = 10 * np.finfo(float).eps * np.abs(a).sum(axis=0).max() * max(a.shape)
    for _ in range(max_iter or 3 * num_cols):
        gradient = a.T @ (b - a @ x)
        if passive.all() or (gradient[~passive] <= tol).all():
            break
        passive[int(np.argmax(np.where(passive, -np.inf, gradient)))] = True
        while True:
            z = np.zeros(num_cols)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            blocking = passive & (z <= 0)
            alpha = float(np.min(x[blocking] / (x[blocking] - z[blocking])))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
    return x


def fit_coefficients(samples: Sequence[tuple[StepShape, float]]) -> Coefficients:
    """(knots, slopes, fixed_s, s_per_prefill_chunk, s_per_prefill_pair, s_per_decode_kv_token)
    minimising the squared relative error over `samples`, every coefficient >= 0."""
    if any(not (s > 0 and np.isfinite(s)) for _, s in samples):
        raise ConfigError("step-time samples must be finite and > 0 seconds")
    knots = choose_knots([shape.num_tokens for shape, _ in samples])
    num_features = _NUM_SCALAR_FEATURES + len(knots)
    if len(samples) < num_features:
        raise ConfigError(f"need at least {num_features} step-time samples to fit, got "
                          f"{len(samples)}: profile more prompt lengths and batch sizes")
    a = np.array([step_features(shape, knots) for shape, _ in samples])
    y = np.array([s for _, s in samples])
    a, b = a / y[:, None], np.ones_like(y)  # relative error: each row divided by its time
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0  # an all-zero feature (no prefills measured) stays at 0
    x = nnls(a / scale, b) / scale
    fixed_s, per_chunk, per_pair, per_kv = (float(v) for v in x[:_NUM_SCALAR_FEATURES])
    slopes = tuple(float(v) for v in x[_NUM_SCALAR_FEATURES:])
    return knots, slopes, fixed_s, per_chunk, per_pair, per_kv
