from __future__ import annotations

import numpy as np
import pytest

from shunter.metrics.stats import LatencyStats, finite_or_none, safe_ratio


def test_percentiles_interpolate_linearly():
    s = LatencyStats.of(np.array([4.0, 1.0, 3.0, 2.0]))
    assert (s.mean, s.p50) == (2.5, 2.5)
    assert s.p90 == pytest.approx(3.7)  # rank 0.9 * 3 = 2.7 between 3 and 4
    assert s.p99 == pytest.approx(3.97)


def test_nan_samples_are_dropped_and_empty_is_none():
    assert LatencyStats.of(np.array([np.nan, 2.0])).p99 == 2.0
    assert LatencyStats.of(np.array([np.nan])) == LatencyStats()
    assert LatencyStats.of(np.empty(0)).to_dict() == {"mean": None, "p50": None, "p90": None,
                                                      "p99": None}


def test_ratio_helpers():
    assert safe_ratio(1, 0) is None
    assert safe_ratio(0, 4) == 0.0
    assert finite_or_none(float("nan")) is None
    assert finite_or_none(np.float64(1.5)) == 1.5 and type(finite_or_none(np.float64(1.5))) is float


def test_may_reorder_gives_the_same_stats_and_default_leaves_input_alone():
    samples = np.random.default_rng(3).exponential(1.0, 1001)
    original = samples.copy()
    expected = LatencyStats.of(samples)
    assert np.array_equal(samples, original)
    assert LatencyStats.of(samples.copy(), may_reorder=True) == expected
