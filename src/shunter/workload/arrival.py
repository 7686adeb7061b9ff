"""Arrival processes: inter-arrival gaps with a given mean rate and burstiness.

A process is a function `(rng, rate, cv, n) -> n gaps in seconds` with mean 1/rate and
coefficient of variation `cv` (std/mean of the gaps). Poisson is cv = 1 whatever is asked;
Gamma and Weibull take any cv > 0 (cv > 1 is burstier than Poisson, as in ServeGen's fits);
constant spacing has cv = 0. The first request arrives at t = 0, as in a trace after t - t0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from shunter.errors import ConfigError

__all__ = [
    "ARRIVAL_PROCESSES",
    "STREAM_ARRIVALS",
    "STREAM_ROWS",
    "ArrivalProcess",
    "arrival_times",
    "get_arrival_process",
    "iter_arrival_times",
    "seeded_rng",
    "weibull_shape_for_cv",
]

ArrivalProcess = Callable[[np.random.Generator, float, float, int], np.ndarray]

_CHUNK = 4096  # gaps drawn per numpy call when streaming

# Independent random streams drawn from one user seed, so that, e.g., asking for Poisson arrivals
# does not change which rows a length file's sampling picks.
STREAM_ARRIVALS = 0
STREAM_ROWS = 1


def seeded_rng(seed: int, stream: int) -> np.random.Generator:
    """A generator for one purpose (`stream`) under the user's `seed` (>= 0)."""
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([stream, seed])


def _poisson_gaps(rng: np.random.Generator, rate: float, cv: float, n: int) -> np.ndarray:
    return rng.exponential(1.0 / rate, n)


def _gamma_gaps(rng: np.random.Generator, rate: float, cv: float, n: int) -> np.ndarray:
    shape = 1.0 / (cv * cv)
    return rng.gamma(shape, 1.0 / (rate * shape), n)


def weibull_shape_for_cv(cv: float) -> float:
    """The Weibull shape k whose coefficient of variation is `cv` (bisection on log k)."""
    def cv_of(k: float) -> float:
        log_ratio = math.lgamma(1 + 2 / k) - 2 * math.lgamma(1 + 1 / k)
        return math.sqrt(max(math.expm1(log_ratio), 0.0))

    lo, hi = 0.02, 500.0  # cv(0.02) ~ 1e14, cv(500) ~ 0.0026; cv falls as k grows
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if cv_of(mid) > cv:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def _weibull_gaps(rng: np.random.Generator, rate: float, cv: float, n: int) -> np.ndarray:
    k = weibull_shape_for_cv(cv)
    scale = 1.0 / (rate * math.exp(math.lgamma(1 + 1 / k)))
    return scale * rng.weibull(k, n)


def _constant_gaps(rng: np.random.Generator, rate: float, cv: float, n: int) -> np.ndarray:
    return np.full(n, 1.0 / rate)


ARRIVAL_PROCESSES: dict[str, ArrivalProcess] = {
    "poisson": _poisson_gaps,
    "gamma": _gamma_gaps,
    "weibull": _weibull_gaps,
    "constant": _constant_gaps,
}


def get_arrival_process(name: str) -> ArrivalProcess:
    """The process called `name`; an unknown name is a ConfigError listing the valid ones."""
    try:
        return ARRIVAL_PROCESSES[name]
    except KeyError:
        raise ConfigError(
            f"unknown arrival process {name!r}; valid: {', '.join(sorted(ARRIVAL_PROCESSES))}"
        ) from None


def _check(rate: float, cv: float) -> None:
    if not rate > 0:
        raise ConfigError(f"rate must be > 0 requests/s, got {rate}")
    if not (cv > 0 and math.isfinite(cv)):
        raise ConfigError(f"cv must be a finite number > 0, got {cv}")


def iter_arrival_times(rng: np.random.Generator, rate: float, *, process: str = "poisson",
                       cv: float = 1.0) -> Iterator[float]:
    """Endless arrival times (s) starting at 0; rate = inf means everything at t = 0."""
    draw = get_arrival_process(process)
    _check(rate, cv)
    if math.isinf(rate):
        while True:
            yield 0.0
    now = 0.0
    yield now
    while True:
        for gap in draw(rng, rate, cv, _CHUNK).tolist():
            now += gap
            yield now


def arrival_times(n: int, rng: np.random.Generator, rate: float, *, process: str = "poisson",
                  cv: float = 1.0) -> list[float]:
    """The first `n` times of `iter_arrival_times` (same values, drawn in one go)."""
    draw = get_arrival_process(process)
    _check(rate, cv)
    if n <= 0:
        return []
    if math.isinf(rate):
        return [0.0] * n
    times = [0.0]
    now = 0.0
    num_left = n - 1
    while num_left > 0:  # same chunking as the iterator, so both give identical floats
        for gap in draw(rng, rate, cv, _CHUNK).tolist()[:num_left]:
            now += gap
            times.append(now)
        num_left = n - len(times)
    return times
