"""Arrival processes: mean rate, burstiness, determinism, streaming equals bulk."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest

from shunter.errors import ConfigError
from shunter.workload.arrival import (
    ARRIVAL_PROCESSES,
    arrival_times,
    iter_arrival_times,
    seeded_rng,
    weibull_shape_for_cv,
)


def _rate_and_cv(times: list[float]) -> tuple[float, float]:
    gaps = np.diff(times)
    return 1.0 / gaps.mean(), gaps.std() / gaps.mean()


@pytest.mark.parametrize(("process", "cv"), [("poisson", 1.0), ("gamma", 0.5), ("gamma", 3.0),
                                             ("weibull", 2.0), ("weibull", 0.7), ("constant", 1.0)])
def test_mean_rate_and_cv_within_tolerance(process: str, cv: float) -> None:
    times = arrival_times(20000, np.random.default_rng(11), 5.0, process=process, cv=cv)
    rate, measured_cv = _rate_and_cv(times)
    assert times[0] == 0.0
    assert rate == pytest.approx(5.0, rel=0.05)
    expected_cv = {"poisson": 1.0, "constant": 0.0}.get(process, cv)
    assert measured_cv == pytest.approx(expected_cv, rel=0.1, abs=1e-9)


def test_poisson_gaps_are_exponential() -> None:
    """P(gap > mean) = e^-1 for an exponential, 0.5 for a symmetric law."""
    gaps = np.diff(arrival_times(50000, np.random.default_rng(0), 2.0))
    assert np.mean(gaps > 0.5) == pytest.approx(math.exp(-1), abs=0.01)


def test_streaming_gives_the_same_floats_as_bulk() -> None:
    bulk = arrival_times(10000, seeded_rng(3, 0), 7.0, process="gamma", cv=2.0)
    stream = list(itertools.islice(iter_arrival_times(seeded_rng(3, 0), 7.0, process="gamma",
                                                      cv=2.0), 10000))
    assert stream == bulk


def test_same_seed_same_times_different_seed_different() -> None:
    assert arrival_times(100, seeded_rng(1, 0), 3.0) == arrival_times(100, seeded_rng(1, 0), 3.0)
    assert arrival_times(100, seeded_rng(1, 0), 3.0) != arrival_times(100, seeded_rng(2, 0), 3.0)
    assert arrival_times(100, seeded_rng(1, 0), 3.0) != arrival_times(100, seeded_rng(1, 1), 3.0)


def test_infinite_rate_puts_everything_at_zero() -> None:
    assert arrival_times(4, seeded_rng(0, 0), math.inf) == [0.0] * 4


@pytest.mark.parametrize("cv", [0.3, 1.0, 2.5, 8.0])
def test_weibull_shape_inverts_the_cv(cv: float) -> None:
    k = weibull_shape_for_cv(cv)
    ratio = math.exp(math.lgamma(1 + 2 / k) - 2 * math.lgamma(1 + 1 / k))
    assert math.sqrt(ratio - 1) == pytest.approx(cv, rel=1e-6)
    assert weibull_shape_for_cv(1.0) == pytest.approx(1.0, rel=1e-6)


def test_bad_process_rate_or_cv() -> None:
    rng = seeded_rng(0, 0)
    with pytest.raises(ConfigError, match="unknown arrival process 'burst'; valid: constant, gamma"):
        arrival_times(3, rng, 1.0, process="burst")
    with pytest.raises(ConfigError, match="rate must be > 0"):
        arrival_times(3, rng, 0.0)
    with pytest.raises(ConfigError, match="cv must be"):
        arrival_times(3, rng, 1.0, process="gamma", cv=0.0)
    assert set(ARRIVAL_PROCESSES) == {"poisson", "gamma", "weibull", "constant"}


def test_statistics_module_agrees_on_a_small_sample() -> None:
    times = arrival_times(2001, seeded_rng(5, 0), 4.0, process="constant")
    assert statistics.mean(b - a for a, b in itertools.pairwise(times)) == pytest.approx(0.25)
