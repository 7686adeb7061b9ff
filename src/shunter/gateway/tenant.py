"""Tenants: API keys, weights, priority ceilings and rate limits (requests and tokens per minute).

A gateway with no tenants configured is open: every request belongs to `DEFAULT_TENANT` and no
key is checked. Once any tenant is configured, every request needs one of their keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shunter.core.types import DEFAULT_TENANT
from shunter.gateway.errors import AuthenticationError

__all__ = ["TenantConfig", "TenantTable", "TokenBucket"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantConfig:
    """One tenant. `priority_ceiling` is the most urgent priority it may ask for (smaller runs
    first, as in vLLM): a request asking for more is clamped to it. `weight` is its share under
    fair queueing. Limits of None mean unlimited. `max_concurrent_requests` caps what the tenant
has admitted (queued or running) at once. A request without `max_tokens` reserves the tenant's
expected output against its token limit: `output_tokens_estimate` until it has history, then
a running average of what its requests without `max_tokens` really generated."""

    name: str
    api_keys: tuple[str, ...] = ()
    weight: float = 1.0
    priority_ceiling: int = 0
    default_priority: int = 0
    max_requests_per_min: float | None = None
    max_tokens_per_min: float | None = None
    max_concurrent_requests: int | None = None
    output_tokens_estimate: int = 256

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a tenant needs a name")
        if not self.weight > 0:
            raise ValueError(f"tenant {self.name}: weight must be > 0, got {self.weight}")
        if self.default_priority < self.priority_ceiling:
            raise ValueError(f"tenant {self.name}: default_priority {self.default_priority} is more "
                             f"urgent than its priority_ceiling {self.priority_ceiling}")
        for limit in ("max_requests_per_min", "max_tokens_per_min", "max_concurrent_requests"):
            value = getattr(self, limit)
            if value is not None and not value > 0:
                raise ValueError(f"tenant {self.name}: {limit} must be > 0, got {value}")
        if self.output_tokens_estimate < 0:
            raise ValueError(f"tenant {self.name}: output_tokens_estimate must be >= 0, got "
                             f"{self.output_tokens_estimate}")

    def clamp_priority(self, requested: int | None) -> int:
        return self.default_priority if requested is None else max(requested, self.priority_ceiling)


@dataclass(slots=True)
class TokenBucket:
    """`capacity` tokens, refilled at `capacity` per minute; a balance may go negative (debt)."""

    capacity: float
    level: float
    updated_s: float

    @classmethod
    def full(cls, per_min: float, now_s: float) -> TokenBucket:
        return cls(per_min, per_min, now_s)

    @property
    def rate_per_s(self) -> float:
        return self.capacity / 60.0

    def _refill(self, now_s: float) -> None:
        self.level = min(self.capacity, self.level + (now_s - self.updated_s) * self.rate_per_s)
        self.updated_s = now_s

    def wait_s(self, amount: float, now_s: float) -> float:
        """Seconds until `amount` (capped at the capacity) can be taken; 0 if now."""
        self._refill(now_s)
        deficit = min(amount, self.capacity) - self.level
        return 0.0 if deficit <= 0 else deficit / self.rate_per_s

    def take(self, amount: float, now_s: float) -> None:
        self._refill(now_s)
        self.level -= amount

    def remaining(self, now_s: float) -> float:
        """What could be taken now (negative: in debt)."""
        self._refill(now_s)
        return self.level


_OUTPUT_EWMA_ALPHA = 0.2  # weight of the latest request in a tenant's output estimate


@dataclass(slots=True)
class _TenantState:
    config: TenantConfig
    requests: TokenBucket | None
    tokens: TokenBucket | None
    output_estimate: float = 0.0

    def __post_init__(self) -> None:
        self.output_estimate = float(self.config.output_tokens_estimate)


@dataclass(slots=True)
class TenantTable:
    """API key -> tenant, and each tenant's rate-limit buckets."""

    tenants: dict[str, _TenantState] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, configs: list[TenantConfig], now_s: float) -> TenantTable:
        table = cls()
        for config in configs:
            if config.name in table.tenants:
                raise ValueError(f"tenant {config.name!r} is configured twice")
            if not config.api_keys:  # else nobody could be it, or everybody would be
                raise ValueError(f"tenant {config.name!r} has no api_keys: with tenants "
                                 "configured every request must carry a tenant's key")
            table.tenants[config.name] = _TenantState(
                config,
                None if config.max_requests_per_min is None
                else TokenBucket.full(config.max_requests_per_min, now_s),
                None if config.max_tokens_per_min is None
                else TokenBucket.full(config.max_tokens_per_min, now_s))
            for key in config.api_keys:
                if key in table.by_key:
                    raise ValueError(f"an API key of tenant {config.name!r} is already used by "
                                     f"{table.by_key[key]!r}")
                table.by_key[key] = config.name
        if not table.tenants:
            table.tenants[DEFAULT_TENANT] = _TenantState(TenantConfig(name=DEFAULT_TENANT),
                                                         None, None)
        return table

    @property
    def is_open(self) -> bool:
        return not self.by_key

    def authenticate(self, authorization: str | None) -> TenantConfig:
        """The tenant of a `Authorization: Bearer KEY` header (any header when open)."""
        if self.is_open:
            return self.tenants[DEFAULT_TENANT].config
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthenticationError("missing API key: send 'Authorization: Bearer KEY'",
                                      code="invalid_api_key")
        key = authorization[7:].strip()
        name = self.by_key.get(key)
        if name is None:
            raise AuthenticationError("invalid API key", code="invalid_api_key")
        return self.tenants[name].config

    def max_concurrent(self, tenant: str) -> int | None:
        return self.tenants[tenant].config.max_concurrent_requests

    def output_estimate(self, tenant: str) -> int:
        """Output tokens to reserve for a request of `tenant` without `max_tokens`."""
        return round(self.tenants[tenant].output_estimate)

    def observe_output(self, tenant: str, num_tokens: int) -> None:
        """What a request of `tenant` without `max_tokens` generated (updates its estimate)."""
        state = self.tenants[tenant]
        state.output_estimate += _OUTPUT_EWMA_ALPHA * (num_tokens - state.output_estimate)

    def weight(self, tenant: str) -> float:
        state = self.tenants.get(tenant)
        return 1.0 if state is None else state.config.weight

    def rate_limit_wait_s(self, tenant: str, num_tokens: float, now_s: float) -> float:
        """Seconds until the tenant may send one more request of `num_tokens`; 0 if now."""
        state = self.tenants[tenant]
        waits = [0.0]
        if state.requests is not None:
            waits.append(state.requests.wait_s(1, now_s))
        if state.tokens is not None:
            waits.append(state.tokens.wait_s(num_tokens, now_s))
        return max(waits)

    def ratelimit_headers(self, tenant: str, now_s: float) -> list[tuple[bytes, bytes]]:
        """OpenAI's x-ratelimit-* headers for a tenant with limits (none without)."""
        state = self.tenants[tenant]
        out: list[tuple[bytes, bytes]] = []
        for what, bucket in (("requests", state.requests), ("tokens", state.tokens)):
            if bucket is None:
                continue
            remaining = max(0.0, bucket.remaining(now_s))
            reset_s = (bucket.capacity - remaining) / bucket.rate_per_s
            out += [(f"x-ratelimit-limit-{what}".encode(), b"%d" % bucket.capacity),
                    (f"x-ratelimit-remaining-{what}".encode(), b"%d" % remaining),
                    (f"x-ratelimit-reset-{what}".encode(), f"{reset_s:.3g}s".encode())]
        return out

    def charge(self, tenant: str, num_requests: int, num_tokens: float, now_s: float) -> None:
        """Take from the tenant's buckets (negative amounts refund an over-estimate)."""
        state = self.tenants[tenant]
        if state.requests is not None and num_requests:
            state.requests.take(num_requests, now_s)
        if state.tokens is not None and num_tokens:
            state.tokens.take(num_tokens, now_s)
