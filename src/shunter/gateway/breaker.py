"""A per-backend circuit breaker: closed -> open after consecutive failures -> half-open probe.

Only the backend's own failures count: transport errors and 5xx. A 4xx is the request's fault
and never opens the breaker (a client sending bad prompts must not take a healthy backend out).
While open, the backend gets no traffic; after `cooldown_s` (or as soon as a health check
passes) one probe request is let through, and its outcome closes or re-opens the breaker.
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
    cooldown_s: float = 5.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {self.failure_threshold}")
        if not self.cooldown_s > 0:
            raise ValueError(f"cooldown_s must be > 0, got {self.cooldown_s}")


@dataclass(slots=True)
class CircuitBreaker:
    config: BreakerConfig
    state: BreakerState = BreakerState.CLOSED
    num_consecutive_failures: int = 0
    opened_at_s: float = 0.0
    is_probe_out: bool = False

    def can_send(self, now_s: float) -> bool:
        """Whether a request may go to the backend now (a half-open breaker allows one probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now_s - self.opened_at_s >= self.config.cooldown_s:
            self.state = BreakerState.HALF_OPEN
        return self.state is BreakerState.HALF_OPEN and not self.is_probe_out

    def on_send(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.is_probe_out = True

    def on_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.num_consecutive_failures = 0
        self.is_probe_out = False

    def on_failure(self, now_s: float) -> None:
        self.num_consecutive_failures += 1
        self.is_probe_out = False
        if (self.state is BreakerState.HALF_OPEN
                or self.num_consecutive_failures >= self.config.failure_threshold):
            self.state = BreakerState.OPEN
            self.opened_at_s = now_s

    def on_health_passed(self) -> None:
        """A passing health check lets an open breaker probe at once."""
        if self.state is BreakerState.OPEN:
            self.state = BreakerState.HALF_OPEN
            self.is_probe_out = False

    def on_abandoned(self) -> None:
        """A request ended with no verdict (its client left): a probe may go out again."""
        self.is_probe_out = False
