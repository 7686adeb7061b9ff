"""Distribution summaries ({mean, p50, p90, p99}) that are always JSON-safe.

Percentiles are numpy's default (linear interpolation between closest ranks), as in vLLM's
benchmark scripts. An empty sample set gives None for every field, never NaN: "no data" and
"zero seconds" must stay distinguishable, and JSON has no NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PERCENTILES", "LatencyStats", "RejectionGroup", "finite_or_none", "safe_ratio"]

PERCENTILES = (50.0, 90.0, 99.0)


def finite_or_none(value: float | None) -> float | None:
    """`value` as a plain float, or None when it is None, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def safe_ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None when the denominator is zero (undefined, not 0)."""
    if denominator == 0:
        return None
    return finite_or_none(numerator / denominator)


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Mean and percentiles of one latency in seconds; all None when there were no samples."""

    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, samples: np.ndarray, *, may_reorder: bool = False) -> LatencyStats:
        """Summarise `samples`; NaN entries (a request without this latency) are dropped.

        `may_reorder=True` lets the percentiles partition `samples` in place instead of
        copying it (1.6 GB for the pooled ITL of 200M tokens).
        """
        samples = np.asarray(samples, dtype=np.float64)
        is_nan = np.isnan(samples)
        if is_nan.any():
            samples, may_reorder = samples[~is_nan], True
        if samples.size == 0:
            return cls()
        mean = samples.mean()  # before the percentiles may reorder it: same rounding
        p50, p90, p99 = np.percentile(samples, PERCENTILES, overwrite_input=may_reorder)
        return cls(
            mean=finite_or_none(mean),
            p50=finite_or_none(p50),
            p90=finite_or_none(p90),
            p99=finite_or_none(p99),
        )

    def to_dict(self) -> dict[str, float | None]:
        return {"mean": self.mean, "p50": self.p50, "p90": self.p90, "p99": self.p99}


@dataclass(frozen=True, slots=True)
class RejectionGroup:
    """The requests rejected for one reason: how many, and the range of their prompt lengths."""

    num_requests: int
    min_prompt_tokens: int
    max_prompt_tokens: int

    def to_dict(self) -> dict[str, int]:
        return {"num_requests": self.num_requests, "min_prompt_tokens": self.min_prompt_tokens,
                "max_prompt_tokens": self.max_prompt_tokens}
