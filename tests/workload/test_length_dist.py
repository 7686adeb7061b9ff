"""Length distributions: bounds, means, validation."""

from __future__ import annotations

import numpy as np
import pytest

from shunter.workload.length_dist import LENGTH_SAMPLERS, LengthDistribution


def test_fixed_and_uniform() -> None:
    rng = np.random.default_rng(0)
    assert LengthDistribution(kind="fixed", mean_tokens=77).sample(rng, 3) == [77, 77, 77]
    values = LengthDistribution(kind="uniform", min_tokens=5, max_tokens=8).sample(rng, 2000)
    assert set(values) == {5, 6, 7, 8}


@pytest.mark.parametrize("dist", [
    LengthDistribution(kind="lognormal", mean_tokens=600, sigma=0.8),
    LengthDistribution(kind="pareto", mean_tokens=600, alpha=3.0),
])
def test_heavy_tailed_means(dist: LengthDistribution) -> None:
    values = np.array(dist.sample(np.random.default_rng(1), 200_000))
    assert values.mean() == pytest.approx(600, rel=0.03)
    assert values.min() >= 1 and np.median(values) < values.mean()  # right-skewed


def test_clipping_and_integer_results() -> None:
    dist = LengthDistribution(kind="pareto", mean_tokens=100, alpha=1.2, min_tokens=10, max_tokens=4000)
    values = dist.sample(np.random.default_rng(2), 50_000)
    assert all(isinstance(v, int) for v in values[:10])
    assert min(values) >= 10 and max(values) == 4000


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "zipf"}, "unknown length distribution 'zipf'; valid: fixed, uniform, lognormal, pareto"),
    ({"kind": "uniform"}, "needs max_tokens"),
    ({"min_tokens": 0}, "min_tokens must be >= 1"),
    ({"min_tokens": 9, "max_tokens": 3}, "must be >= min_tokens"),
    ({"mean_tokens": 0.5}, "mean_tokens must be"),
    ({"kind": "pareto", "alpha": 1.0}, "alpha must be"),
    ({"kind": "lognormal", "sigma": 0.0}, "sigma must be"),
])
def test_invalid_distributions(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LengthDistribution(**kwargs)
    assert set(LENGTH_SAMPLERS) == {"fixed", "uniform", "lognormal", "pareto"}
