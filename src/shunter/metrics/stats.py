"""Distribution summaries ({mean, p50, p90, p99}) that are always JSON-safe.

Percentiles are numpy's default (linear interpolation between closest ranks), as in vLLM's
benchmark scripts. An empty sample set gives None for every field, never NaN: "no data" and
"zero seconds" must stay distinguishable, and JSON has no NaN.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PERCENTILES", "LatencyStats", "RejectionGroup", "exact_mean", "finite_or_none",
           "safe_ratio"]

PERCENTILES = (50.0, 90.0, 99.0)


def finite_or_none(value: float | None) -> float | None:
    """`value` as a plain float, or None when it is None, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def exact_mean(samples: np.ndarray) -> float:
    """The correctly rounded mean of a non-empty sample: its exact sum (`math.fsum`) over its
    size, so it does not depend on the order of the sample (a streamed run's records come in
    another order than a whole run's)."""
    return exact_sum(samples) / samples.size


def exact_sum(values: np.ndarray) -> float:
    """The correctly rounded sum of `values` (`math.fsum`), read as Python floats a slice at a
    time: a whole `tolist()` of a few hundred thousand values would hold 24 bytes a value."""
    return math.fsum(itertools.chain.from_iterable(
        values[i:i + _SUM_SLICE].tolist() for i in range(0, values.size, _SUM_SLICE)))


_SUM_SLICE = 8192


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
        mean = exact_mean(samples)  # before the percentiles may reorder it
        p50, p90, p99 = np.percentile(samples, PERCENTILES, overwrite_input=may_reorder)
        return cls(
            mean=finite_or_none(mean),
            p50=finite_or_none(p50),
            p90=finite_or_none(p90),
            p99=finite_or_none(p99),
        )

    @classmethod
    def of_counts(cls, values: np.ndarray, counts: np.ndarray) -> LatencyStats:
        """`of` a sample given as its distinct values, ascending, and how often each occurs
        (`np.unique(samples, return_counts=True)`): the same percentiles to the bit, without
        the sample (a run's pooled inter-token gaps: 20M floats for 100,000 requests, a few
        hundred thousand distinct ones). The mean is the exact mean of values x counts."""
        counts = np.asarray(counts, dtype=np.int64)
        total = int(counts.sum())
        if total == 0:
            return cls()
        ends = np.cumsum(counts)  # the sorted sample's position i holds values[searchsorted]
        mean = exact_sum(values * counts) / total
        # numpy's "linear" method: (n - 1) q, its floor and the next rank, then numpy's lerp
        q = np.true_divide(np.asarray(PERCENTILES, dtype=np.float64), 100)
        virtual = (total - 1) * q
        below = np.floor(virtual)
        gamma = virtual - below
        below_rank = np.minimum(below.astype(np.int64), total - 1)
        above_rank = np.minimum(below_rank + 1, total - 1)
        a = values[np.searchsorted(ends, below_rank, side="right")]
        b = values[np.searchsorted(ends, above_rank, side="right")]
        diff = b - a
        out = a + diff * gamma
        out = np.where(gamma >= 0.5, b - diff * (1 - gamma), out)
        out = np.where(virtual >= total - 1, values[-1], out)
        return cls(mean=finite_or_none(mean), p50=finite_or_none(out[0]),
                   p90=finite_or_none(out[1]), p99=finite_or_none(out[2]))

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
