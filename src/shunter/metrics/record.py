"""Per-request timing records: the one input of every metric, in sim, engine, gateway and bench."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from shunter.core.types import DEFAULT_TENANT, FinishReason

__all__ = ["COMPLETED_REASONS", "RequestRecord"]

# the finish reasons of a completed request: every latency is over these (metrics.summary); an
# early stop (Dynasor) is one: the policy judged the request's answer settled and returned it
COMPLETED_REASONS: tuple[FinishReason, ...] = (FinishReason.STOP, FinishReason.LENGTH,
                                               FinishReason.EARLY_STOP)


@dataclass(slots=True, kw_only=True)
class RequestRecord:
    """What happened to one request, in seconds on one clock.

    `token_times_s` holds the time each output token reached the client (the first one is the
    first token, so TTFT = token_times_s[0] - arrival_s). A rejected or aborted request keeps
    its record with `finish_reason` set, so nothing a user submitted disappears from results.
    """

    request_id: str
    arrival_s: float
    num_prompt_tokens: int
    tenant: str = DEFAULT_TENANT
    priority: int = 0
    first_scheduled_s: float | None = None
    # a list, an array('d') (8 bytes a token) or the simulator's ranges over its step timeline
    token_times_s: Sequence[float] = field(default_factory=list)
    finish_s: float | None = None
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    session_id: str | None = None
    program_id: str | None = None
    replica_id: int | None = None
    error: str | None = None  # why a request was rejected or failed, in words

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_times_s)

    @property
    def is_completed(self) -> bool:
        return self.finish_reason in COMPLETED_REASONS

    @property
    def ttft_s(self) -> float | None:
        return self.token_times_s[0] - self.arrival_s if self.token_times_s else None

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """vLLM's definition: (E2E - TTFT) / (output tokens - 1); None for one-token outputs."""
        n = len(self.token_times_s)
        if n < 2:
            return None
        return (self.token_times_s[-1] - self.token_times_s[0]) / (n - 1)

    @property
    def queue_s(self) -> float | None:
        return None if self.first_scheduled_s is None else self.first_scheduled_s - self.arrival_s
