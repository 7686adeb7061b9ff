"""The boundary between the scheduler and whoever executes its steps.

One message each way (STYLE.md section 2): the scheduler emits a `SchedulerOutput`, the
executor (simulated or real) answers with a `StepResult`, and the scheduler turns that into
`RequestOutput`s for the runtime above it. Messages carry ids and ints only.

Messages are read-only by contract: nobody assigns to one after building it. They are not
`frozen=True` dataclasses because a simulated step builds a dozen of them and construction is
the cost: a frozen dataclass's generated `__init__` sets each field through
`object.__setattr__`, and under the compiled build (mypyc) generated dataclass methods stay
interpreted. An explicit `__init__` on a slotted dataclass keeps `==`, `repr` and
`dataclasses.replace` and builds a 3-field message about 3x faster interpreted, 5-9x compiled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
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


@dataclass(slots=True, init=False)
class ScheduledChunk:
    """Tokens [num_computed_tokens, num_computed_tokens + num_scheduled_tokens) of a request."""

    request_id: RequestId
    num_computed_tokens: int
    num_scheduled_tokens: int
    block_ids: tuple[int, ...]  # the request's whole block table after this step's allocation
    is_sampling: bool  # the chunk reaches the last known token, so the step samples one more

    def __init__(self, request_id: RequestId, num_computed_tokens: int,
                 num_scheduled_tokens: int, block_ids: tuple[int, ...], is_sampling: bool) -> None:
        self.request_id = request_id
        self.num_computed_tokens = num_computed_tokens
        self.num_scheduled_tokens = num_scheduled_tokens
        self.block_ids = block_ids
        self.is_sampling = is_sampling

    @property
    def is_decode(self) -> bool:
        return self.num_scheduled_tokens == 1 and self.is_sampling and self.num_computed_tokens > 0


@dataclass(slots=True, init=False)
class NewRequestData:
    """A request the executor sees for the first time (or again, after recompute preemption)."""

    request_id: RequestId
    prompt_token_ids: tuple[int, ...] | None  # None in the simulator, which has no token ids
    num_prompt_tokens: int
    sampling_seed: int | None

    def __init__(self, request_id: RequestId, prompt_token_ids: tuple[int, ...] | None,
                 num_prompt_tokens: int, sampling_seed: int | None = None) -> None:
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.num_prompt_tokens = num_prompt_tokens
        self.sampling_seed = sampling_seed


_NO_WORK = StepShape()
_NO_PROBES: Mapping[RequestId, float] = MappingProxyType({})
_NO_DRAFTS: Mapping[RequestId, int] = MappingProxyType({})
_NO_ACCEPTED: Mapping[RequestId, tuple[int, ...]] = MappingProxyType({})


@dataclass(slots=True, init=False)
class SchedulerOutput:
    """Everything one step needs: which tokens to compute and which KV blocks to move."""

    step_id: int
    chunks: tuple[ScheduledChunk, ...]
    new_requests: tuple[NewRequestData, ...]
    # Copies to make before the step's forward pass, swap_out first, then swap_in.
    swap_out: tuple[tuple[int, int], ...]  # (device block, host block)
    swap_in: tuple[tuple[int, int], ...]  # (host block, device block)
    # Stores of finished requests' KV to the host tier (device block, host block), made before
    # swap_out. A GPU copies them on its own DMA stream while steps go on (vLLM's offloading
    # connector and LMCache store asynchronously), so the simulator charges no step for them.
    offload: tuple[tuple[int, int], ...]
    preempted_ids: tuple[RequestId, ...]  # recompute-preempted: executor drops their state
    finished_ids: tuple[RequestId, ...]  # ended since the last step: executor drops state
    shape: StepShape
    # speculative decoding (vLLM's scheduled_spec_decode_tokens, as counts): a decode chunk's
    # draft tokens, the last of its `num_scheduled_tokens`; empty without speculation
    num_draft_tokens: Mapping[RequestId, int]

    def __init__(self, *, step_id: int, chunks: tuple[ScheduledChunk, ...],
                 new_requests: tuple[NewRequestData, ...] = (),
                 swap_out: tuple[tuple[int, int], ...] = (),
                 swap_in: tuple[tuple[int, int], ...] = (),
                 offload: tuple[tuple[int, int], ...] = (),
                 preempted_ids: tuple[RequestId, ...] = (),
                 finished_ids: tuple[RequestId, ...] = (), shape: StepShape = _NO_WORK,
                 num_draft_tokens: Mapping[RequestId, int] = _NO_DRAFTS) -> None:
        self.step_id = step_id
        self.chunks = chunks
        self.new_requests = new_requests
        self.swap_out = swap_out
        self.swap_in = swap_in
        self.offload = offload
        self.preempted_ids = preempted_ids
        self.finished_ids = finished_ids
        self.shape = shape
        self.num_draft_tokens = num_draft_tokens

    @property
    def is_empty(self) -> bool:
        return not self.chunks and not self.swap_in and not self.swap_out and not self.offload


@dataclass(slots=True, init=False)
class StepResult:
    """What a step produced.

    `duration_s` is the predicted (simulator) or measured (engine) time of the step.
    `sampled` holds the one new token of each request whose chunk had `is_sampling`.
    `stopped` are requests the executor ended by a stop condition it owns (EOS, a stop string;
    in the simulator, the trace's true output length). Length limits are the scheduler's.
    `probes` holds a certainty value in [0, 1] for each request whose output reached a probe
    point this step (every `probe_tokens` generated tokens of an `EarlyStoppingPolicy`; the
    simulator reads its trace, an engine measures it); empty for every other policy.
    `accepted` (speculative decoding) holds, for a chunk with draft tokens
    (`SchedulerOutput.num_draft_tokens`), the leading drafts the target model accepted; they
    come before its `sampled` token (the bonus or corrected one), as vLLM's
    `sampled_token_ids` lists them. A request with drafts absent from it accepted none.
    """

    duration_s: float
    sampled: Mapping[RequestId, int]
    stopped: frozenset[RequestId]
    probes: Mapping[RequestId, float]
    accepted: Mapping[RequestId, tuple[int, ...]]

    def __init__(self, duration_s: float, sampled: Mapping[RequestId, int],
                 stopped: frozenset[RequestId] = frozenset(),
                 probes: Mapping[RequestId, float] = _NO_PROBES,
                 accepted: Mapping[RequestId, tuple[int, ...]] = _NO_ACCEPTED) -> None:
        self.duration_s = duration_s
        self.sampled = sampled
        self.stopped = stopped
        self.probes = probes
        self.accepted = accepted


@dataclass(slots=True, init=False)
class RequestOutput:
    """What the runtime above learns about one request after a step."""

    request_id: RequestId
    new_token_ids: tuple[int, ...]
    finish_reason: FinishReason | None
    num_cached_tokens: int
    error: str | None  # why a request was rejected, in words

    def __init__(self, request_id: RequestId, new_token_ids: tuple[int, ...],
                 finish_reason: FinishReason | None = None, num_cached_tokens: int = 0,
                 error: str | None = None) -> None:
        self.request_id = request_id
        self.new_token_ids = new_token_ids
        self.finish_reason = finish_reason
        self.num_cached_tokens = num_cached_tokens
        self.error = error

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
