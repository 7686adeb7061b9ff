"""A per-backend circuit breaker with outlier ejection, as Envoy's outlier detection does it.

    closed --(failure_threshold consecutive failures)--> open (ejected)
    open --(ejection time over)--> half-open: one probe request at a time
    half-open --(success_threshold probes succeed in a row)--> closed
    half-open --(a probe fails)--> open again, for longer

Only the backend's own failures count: transport errors, 5xx, stalls, malformed streams. A 4xx
is the request's fault and never opens the breaker (a client sending bad prompts must not take
a healthy backend out). The n-th ejection lasts `cooldown_s * n`, at most `max_ejection_s`
(Envoy: base_ejection_time x ejections, capped by max_ejection_time); each `cooldown_s` a
backend stays closed takes one ejection off that count (Envoy decrements its multiplier every
interval a host is healthy), so a backend that fails now and then is not ejected for ever
longer: one that stayed up for as long as its last ejection starts again from the first. A passing health check does not end an
ejection early: a backend that answers /health but fails requests is the case a breaker is for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["BreakerConfig", "BreakerState", "CircuitBreaker"]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    failure_threshold: int = 3
    cooldown_s: float = 5.0  # the first ejection; the n-th lasts n times as long
    max_ejection_s: float = 300.0
    success_threshold: int = 3  # probes that must succeed in a row to close again

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "success_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.cooldown_s > 0:
            raise ValueError(f"cooldown_s must be > 0, got {self.cooldown_s}")
        if not self.max_ejection_s >= self.cooldown_s:
            raise ValueError(f"max_ejection_s must be >= cooldown_s ({self.cooldown_s}), got "
                             f"{self.max_ejection_s}")


@dataclass(slots=True)
class CircuitBreaker:
    config: BreakerConfig
    state: BreakerState = BreakerState.CLOSED
    num_consecutive_failures: int = 0
    num_probe_successes: int = 0
    num_ejections: int = 0  # the ejection multiplier (less one per cooldown_s closed)
    opened_at_s: float = 0.0
    closed_at_s: float = 0.0
    is_probe_out: bool = False

    @property
    def ejection_s(self) -> float:
        """How long the current (or last) ejection lasts."""
        return min(self.config.cooldown_s * max(1, self.num_ejections),
                   self.config.max_ejection_s)

    def ejected_for_s(self, now_s: float) -> float:
        """Seconds until the breaker lets a probe through (0: it may send now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.opened_at_s + self.ejection_s - now_s)

    def can_send(self, now_s: float) -> bool:
        """Whether a request may go to the backend now (a half-open breaker allows one probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now_s - self.opened_at_s >= self.ejection_s:
            self.state = BreakerState.HALF_OPEN
            self.num_probe_successes = 0
        return self.state is BreakerState.HALF_OPEN and not self.is_probe_out

    def on_send(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.is_probe_out = True

    def on_success(self, now_s: float) -> None:
        self.num_consecutive_failures = 0
        self.is_probe_out = False
        if self.state is BreakerState.HALF_OPEN:
            self.num_probe_successes += 1
            if self.num_probe_successes >= self.config.success_threshold:
                self.state = BreakerState.CLOSED
                self.closed_at_s = now_s

    def on_failure(self, now_s: float) -> None:
        self.num_consecutive_failures += 1
        self.is_probe_out = False
        if self.state is BreakerState.OPEN:
            return  # a request sent before the ejection ended: already counted
        if (self.state is BreakerState.HALF_OPEN
                or self.num_consecutive_failures >= self.config.failure_threshold):
            if self.state is BreakerState.CLOSED:  # one step back per cooldown_s it behaved
                behaved = int((now_s - self.closed_at_s) // self.config.cooldown_s)
                self.num_ejections = max(0, self.num_ejections - behaved)
            self.state = BreakerState.OPEN
            self.opened_at_s = now_s
            self.num_ejections += 1

    def on_abandoned(self) -> None:
        """A request ended with no verdict (its client left): a probe may go out again."""
        self.is_probe_out = False
