"""Token-length distributions for synthetic workloads.

`LengthDistribution(kind=..., ...)` names one of `LENGTH_SAMPLERS`:

- `fixed`: always `mean_tokens`;
- `uniform`: integers in [min_tokens, max_tokens];
- `lognormal`: mean `mean_tokens`, log-std `sigma` (chat prompts and outputs look like this);
- `pareto`: heavy tail with index `alpha` > 1 and mean `mean_tokens` (a few huge prompts:
  long documents, RAG); the "zipf-ish" case.

Every sample is rounded to an integer and clipped to [min_tokens, max_tokens]; clipping moves
the realised mean a little below `mean_tokens` when max_tokens cuts the tail.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["LENGTH_SAMPLERS", "LengthDistribution", "LengthSampler"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LengthDistribution:
    """A distribution of token counts (see the module docstring for the kinds)."""

    kind: str = "fixed"
    mean_tokens: float = 128.0
    min_tokens: int = 1
    max_tokens: int | None = None
    sigma: float = 1.0  # lognormal: standard deviation of log(length)
    alpha: float = 2.0  # pareto: tail index; smaller is heavier

    def __post_init__(self) -> None:
        if self.kind not in LENGTH_SAMPLERS:
            raise ValueError(
                f"unknown length distribution {self.kind!r}; valid: {', '.join(LENGTH_SAMPLERS)}")
        if self.min_tokens < 1:
            raise ValueError(f"min_tokens must be >= 1, got {self.min_tokens}")
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be >= min_tokens ({self.min_tokens})")
        if self.kind == "uniform" and self.max_tokens is None:
            raise ValueError("a uniform length distribution needs max_tokens")
        if self.kind != "uniform" and not (self.mean_tokens >= 1 and math.isfinite(self.mean_tokens)):
            raise ValueError(f"mean_tokens must be a finite number >= 1, got {self.mean_tokens}")
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be a finite number > 0, got {self.sigma}")
        if not (self.alpha > 1 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be a finite number > 1 (a finite mean), got {self.alpha}")

    def sample(self, rng: np.random.Generator, n: int) -> list[int]:
        """`n` token counts, each in [min_tokens, max_tokens]."""
        raw = LENGTH_SAMPLERS[self.kind](self, rng, n)
        upper = self.max_tokens if self.max_tokens is not None else np.iinfo(np.int64).max
        clipped = np.clip(np.rint(raw), self.min_tokens, min(upper, 2**62))
        return clipped.astype(np.int64).tolist()


LengthSampler = Callable[[LengthDistribution, np.random.Generator, int], np.ndarray]


def _fixed(dist: LengthDistribution, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.full(n, float(dist.mean_tokens))


def _uniform(dist: LengthDistribution, rng: np.random.Generator, n: int) -> np.ndarray:
    assert dist.max_tokens is not None, "validated in __post_init__"
    return rng.integers(dist.min_tokens, dist.max_tokens, n, endpoint=True).astype(np.float64)


def _lognormal(dist: LengthDistribution, rng: np.random.Generator, n: int) -> np.ndarray:
    mu = math.log(dist.mean_tokens) - dist.sigma * dist.sigma / 2  # E[X] = exp(mu + sigma^2/2)
    return rng.lognormal(mu, dist.sigma, n)


def _pareto(dist: LengthDistribution, rng: np.random.Generator, n: int) -> np.ndarray:
    scale = dist.mean_tokens * (dist.alpha - 1) / dist.alpha  # E[X] = alpha * scale / (alpha - 1)
    return scale * (1.0 + rng.pareto(dist.alpha, n))


LENGTH_SAMPLERS: dict[str, LengthSampler] = {
    "fixed": _fixed,
    "uniform": _uniform,
    "lognormal": _lognormal,
    "pareto": _pareto,
}
