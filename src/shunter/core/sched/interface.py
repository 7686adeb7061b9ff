"""The boundary between the scheduler and whoever executes its steps.

One message each way (STYLE.md section 2): the scheduler emits a frozen `SchedulerOutput`,
the executor (simulated or real) answers with a frozen `StepResult`, and the scheduler turns
that into `RequestOutput`s for the runtime above it. Messages carry ids and ints only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from shunter.core.types import FinishReason, RequestId, StepShape

if TYPE_CHECKING:
    from shunter.core.request import Request

__all__ = [
    "NewRequestData",
    "RequestOutput",
    "ScheduledChunk",
    "Scheduler",
    "SchedulerOutput",
    "StepResult",
]


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """Tokens [num_computed_tokens, num_computed_tokens + num_scheduled_tokens) of a request."""

    request_id: RequestId
    num_computed_tokens: int
    num_scheduled_tokens: int
    block_ids: tuple[int, ...]  # the request's whole block table after this step's allocation
    is_sampling: bool  # the chunk reaches the last known token, so the step samples one more

    @property
    def is_decode(self) -> bool:
        return self.num_scheduled_tokens == 1 and self.is_sampling and self.num_computed_tokens > 0


@dataclass(frozen=True, slots=True)
class NewRequestData:
    """A request the executor sees for the first time (or again, after recompute preemption)."""

    request_id: RequestId
    prompt_token_ids: tuple[int, ...] | None  # None in the simulator, which has no token ids
    num_prompt_tokens: int
    sampling_seed: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerOutput:
    """Everything one step needs: which tokens to compute and which KV blocks to move."""

    step_id: int
    chunks: tuple[ScheduledChunk, ...]
    new_requests: tuple[NewRequestData, ...] = ()
    # Copies to make before the step's forward pass, swap_out first, then swap_in.
    swap_out: tuple[tuple[int, int], ...] = ()  # (device block, host block)
    swap_in: tuple[tuple[int, int], ...] = ()  # (host block, device block)
    preempted_ids: tuple[RequestId, ...] = ()  # recompute-preempted: executor drops their state
    finished_ids: tuple[RequestId, ...] = ()  # ended since the last step: executor drops state
    shape: StepShape = field(default_factory=StepShape)

    @property
    def is_empty(self) -> bool:
        return not self.chunks and not self.swap_in and not self.swap_out


@dataclass(frozen=True, slots=True)
class StepResult:
    """What a step produced.

    `duration_s` is the predicted (simulator) or measured (engine) time of the step.
    `sampled` holds the one new token of each request whose chunk had `is_sampling`.
    `stopped` are requests the executor ended by a stop condition it owns (EOS, a stop string;
    in the simulator, the trace's true output length). Length limits are the scheduler's.
    """

    duration_s: float
    sampled: Mapping[RequestId, int]
    stopped: frozenset[RequestId] = frozenset()


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """What the runtime above learns about one request after a step."""

    request_id: RequestId
    new_token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None
    num_cached_tokens: int = 0
    error: str | None = None  # why a request was rejected, in words

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None


class Scheduler(Protocol):
    """The engine-level scheduler the simulator and the engine both drive."""

    def add_request(self, request: Request) -> RequestOutput | None:
        """Queue a request; returns a finished output at once if it was rejected."""
        ...

    def abort(self, request_id: RequestId) -> RequestOutput | None:
        """End a request wherever it is and free its blocks; None if unknown or finished."""
        ...

    def schedule(self) -> SchedulerOutput:
        """Decide the next step."""
        ...

    def update(self, output: SchedulerOutput, result: StepResult) -> Sequence[RequestOutput]:
        """Apply a finished step's result and report what changed for each request."""
        ...

    @property
    def has_work(self) -> bool:
        """Whether any request is waiting, running or swapped."""
        ...
