"""Leaf types shared by every layer: ids, status enums, request specs and step shapes.

Nothing here imports anything from shunter. A type that two layers both need lives here, so
that no layer has to import a layer beside or above it (STYLE.md section 2).
"""

from __future__ import annotations

import enum
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_TENANT",
    "FINISHED_STATUSES",
    "ExpertProfile",
    "FinishReason",
    "ProbeTrace",
    "RequestId",
    "RequestSpec",
    "RequestStatus",
    "StepShape",
    "TenantId",
    "check_number",
    "make_from_registry",
    "short_repr",
]

_T = TypeVar("_T")

RequestId = str
TenantId = str

DEFAULT_BLOCK_SIZE = 16  # tokens per KV block, as in vLLM
DEFAULT_TENANT: TenantId = "default"


class RequestStatus(enum.IntEnum):
    """Where a request is. Finished states sort after every live one (vLLM v1 request.py)."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    SWAPPED = 3
    FINISHED_STOPPED = 10
    FINISHED_LENGTH = 11
    FINISHED_ABORTED = 12
    FINISHED_REJECTED = 13
    FINISHED_EARLY = 14  # ended by its policy from probes of its progress (Dynasor's early exit)

    @property
    def is_finished(self) -> bool:
        return self >= _FIRST_FINISHED


_FIRST_FINISHED = RequestStatus.FINISHED_STOPPED  # (a global: a member read is slow on 3.11)


class FinishReason(enum.StrEnum):
    """Why a request ended, as the OpenAI API and the metrics report it."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    REJECTED = "rejected"
    EARLY_STOP = "early_stop"  # the policy judged the answer settled (or hopeless) and ended it


FINISHED_STATUSES: dict[RequestStatus, FinishReason] = {
    RequestStatus.FINISHED_STOPPED: FinishReason.STOP,
    RequestStatus.FINISHED_LENGTH: FinishReason.LENGTH,
    RequestStatus.FINISHED_ABORTED: FinishReason.ABORT,
    RequestStatus.FINISHED_REJECTED: FinishReason.REJECTED,
    RequestStatus.FINISHED_EARLY: FinishReason.EARLY_STOP,
}


@dataclass(frozen=True, slots=True)
class ProbeTrace:
    """What a trace knows of a reasoning request's progress: the certainty (Certaindex, in
    [0, 1]) its program shows at each probe point, `values[k - 1]` after k * `probe_tokens`
    generated tokens. Trace knowledge like `RequestSpec.num_output_tokens`: only the
    simulator's executor reads it, reporting a value when a request reaches a probe point;
    a policy sees only the values already reported (`StepResult.probes`)."""

    probe_tokens: int
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.probe_tokens < 1:
            raise ValueError(f"probe_tokens must be >= 1, got {self.probe_tokens}")
        if not self.values or not all(0.0 <= v <= 1.0 for v in self.values):  # (NaN fails)
            raise ValueError("a probe trace needs at least one value, each in [0, 1]")

    def value_at(self, num_tokens: int) -> float:
        """The certainty after `num_tokens` generated tokens: the last probe's at or before it
        (0 before the first; the last value past the trace's end)."""
        k = num_tokens // self.probe_tokens
        return 0.0 if k <= 0 else self.values[min(k, len(self.values)) - 1]


@dataclass(frozen=True, slots=True, eq=False)
class ExpertProfile:
    """How a request's tokens spread over a mixture-of-experts model's routed experts:
    `weights[e]` is the share of its token-expert assignments that go to expert `e` (numbers
    >= 0 summing to 1, one per routed expert). A router decoupled from the backbone (Read-ME's
    pre-gating router) computes it before the request runs, so schedulers may read it
    (`Request.expert_profile`); the simulator's MoE cost model charges the experts it makes a
    step hit. Compared by identity (a hash of hundreds of floats per step would cost more)."""

    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.weights or not all(0.0 <= w <= 1.0 for w in self.weights):  # (NaN fails)
            raise ValueError("an expert profile needs at least one weight, each in [0, 1]")
        if abs(math.fsum(self.weights) - 1.0) > 1e-6:
            raise ValueError(f"expert profile weights must sum to 1, got "
                             f"{math.fsum(self.weights):.6g}")

    @classmethod
    def normalized(cls, weights: tuple[float, ...] | list[float]) -> ExpertProfile:
        """The profile of `weights` (>= 0, not all 0) scaled to sum to 1."""
        total = math.fsum(weights)
        if not (total > 0 and math.isfinite(total)) or min(weights) < 0:
            raise ValueError("expert profile weights must be finite numbers >= 0, not all 0")
        return cls(tuple(w / total for w in weights))


@dataclass(slots=True, kw_only=True, init=False, unsafe_hash=True)
class RequestSpec:
    """One request as a workload describes it, before any runtime touches it.

    Read-only by contract (nobody assigns to a spec after building it) and hashable by value,
    but not `frozen=True`: a frozen dataclass's generated `__init__` sets each of the 17 fields
    through `object.__setattr__`, 2.2 us a spec against 0.6 us for this one, checks included
    (a simulation builds one a request; `tests/core/test_types.py` holds the two lists of
    fields and defaults equal).

    `num_output_tokens` is the true output length a trace recorded. Only the simulator's
    executor (which plays the model) and explicit oracle predictors may read it; a scheduler
    policy never does. `max_output_tokens` is the user's cap (OpenAI `max_tokens`); None means
    "up to the model's context".

    `hash_ids` are prefix-block identities as in the Mooncake trace: equal ids at equal
    positions mean a reusable KV prefix, each covering `hash_block_size` tokens of the request's
    token sequence from its start (prompt, then output: a multi-turn turn names the blocks its
    decode fills, which the next turn's prompt reuses); blocks past the ids are unique to the
    request. Routers measuring prompt overlap count only the first
    ceil(num_prompt_tokens / hash_block_size) ids. None means the request shares nothing with
    any other (unless `prompt_token_ids` are given, whose content is hashed instead).
    """

    request_id: RequestId
    arrival_s: float
    num_prompt_tokens: int
    num_output_tokens: int
    max_output_tokens: int | None = None
    tenant: TenantId = DEFAULT_TENANT
    priority: int = 0  # smaller runs first, as in vLLM
    session_id: str | None = None
    program_id: str | None = None
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    # the LoRA adapter the request runs with (vLLM: the `model` name of a LoRARequest);
    # None: the base model
    lora_id: str | None = None
    hash_ids: tuple[int, ...] | None = None
    hash_block_size: int = DEFAULT_BLOCK_SIZE
    prompt_token_ids: tuple[int, ...] | None = field(default=None, repr=False)
    # trace knowledge of a reasoning branch (`shunter.workload.reasoning`), as num_output_tokens
    probe_trace: ProbeTrace | None = field(default=None, repr=False)
    # the request's spread over a MoE model's experts (`ExpertProfile`), if its workload says
    expert_profile: ExpertProfile | None = field(default=None, repr=False)

    def __init__(self, *, request_id: RequestId, arrival_s: float, num_prompt_tokens: int,
                 num_output_tokens: int, max_output_tokens: int | None = None,
                 tenant: TenantId = DEFAULT_TENANT, priority: int = 0,
                 session_id: str | None = None, program_id: str | None = None,
                 ttft_slo_s: float | None = None, tpot_slo_s: float | None = None,
                 lora_id: str | None = None, hash_ids: tuple[int, ...] | None = None,
                 hash_block_size: int = DEFAULT_BLOCK_SIZE,
                 prompt_token_ids: tuple[int, ...] | None = None,
                 probe_trace: ProbeTrace | None = None,
                 expert_profile: ExpertProfile | None = None) -> None:
        self.request_id = request_id
        self.arrival_s = arrival_s
        self.num_prompt_tokens = num_prompt_tokens
        self.num_output_tokens = num_output_tokens
        self.max_output_tokens = max_output_tokens
        self.tenant = tenant
        self.priority = priority
        self.session_id = session_id
        self.program_id = program_id
        self.ttft_slo_s = ttft_slo_s
        self.tpot_slo_s = tpot_slo_s
        self.lora_id = lora_id
        self.hash_ids = hash_ids
        self.hash_block_size = hash_block_size
        self.prompt_token_ids = prompt_token_ids
        self.probe_trace = probe_trace
        self.expert_profile = expert_profile
        self._check()

    def _check(self) -> None:
        if not 0 <= self.arrival_s < math.inf:  # (NaN fails it)
            raise ValueError(f"request {self.request_id}: arrival_s must be a finite number >= 0, "
                             f"got {self.arrival_s}")
        if self.num_prompt_tokens < 1:
            raise ValueError(
                f"request {self.request_id}: num_prompt_tokens must be >= 1, got {self.num_prompt_tokens}"
            )
        if self.num_output_tokens < 1:
            raise ValueError(
                f"request {self.request_id}: num_output_tokens must be >= 1, got {self.num_output_tokens}"
            )
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise ValueError(
                f"request {self.request_id}: max_output_tokens must be >= 1, got {self.max_output_tokens}"
            )
        if self.hash_block_size < 1:
            raise ValueError(f"request {self.request_id}: hash_block_size must be >= 1")
        if self.prompt_token_ids is not None and len(self.prompt_token_ids) != self.num_prompt_tokens:
            raise ValueError(
                f"request {self.request_id}: {len(self.prompt_token_ids)} prompt token ids "
                f"but num_prompt_tokens={self.num_prompt_tokens}"
            )
        if self.lora_id is not None and (type(self.lora_id) is not str or not self.lora_id):
            raise ValueError(f"request {self.request_id}: lora_id must be a non-empty string, "
                             f"got {self.lora_id!r}")
        for name, value in (("ttft_slo_s", self.ttft_slo_s), ("tpot_slo_s", self.tpot_slo_s)):
            if value is not None and not 0 < value < math.inf:
                raise ValueError(f"request {self.request_id}: {name} must be a finite number > 0, "
                                 f"got {value}")


@dataclass(slots=True, init=False)
class StepShape:
    """What a cost model needs to know about one engine step (one forward pass).

    Prefill chunks are (num_new_tokens, num_context_tokens_before_chunk) pairs; decodes are
    summarised, since their cost depends only on their count and the KV they read.

    Read-only by contract, like the scheduler's messages (`core.sched.interface`), and for the
    same reason not `frozen=True`: a simulated step builds two, and a frozen dataclass's
    generated `__init__` sets each field through `object.__setattr__`.
    """

    prefill_chunks: tuple[tuple[int, int], ...] = ()
    num_decode_requests: int = 0
    num_decode_context_tokens: int = 0  # KV tokens read by all decodes together
    # speculative decoding: draft tokens the decodes verify beyond their one new token each
    # (every one of them is a query token with logits, as in vLLM's verification pass)
    num_decode_draft_tokens: int = 0
    # (tokens, profile) of the step's requests that carry an `ExpertProfile`, in request-id
    # order (the simulator's executor fills it; the MoE cost model charges the experts they
    # hit, other tokens are routed uniformly); () leaves every cost model as it was
    expert_mix: tuple[tuple[int, ExpertProfile], ...] = ()

    def __init__(self, *, prefill_chunks: tuple[tuple[int, int], ...] = (),
                 num_decode_requests: int = 0, num_decode_context_tokens: int = 0,
                 num_decode_draft_tokens: int = 0,
                 expert_mix: tuple[tuple[int, ExpertProfile], ...] = ()) -> None:
        self.prefill_chunks = prefill_chunks
        self.num_decode_requests = num_decode_requests
        self.num_decode_context_tokens = num_decode_context_tokens
        self.num_decode_draft_tokens = num_decode_draft_tokens
        self.expert_mix = expert_mix

    @property
    def num_prefill_tokens(self) -> int:
        return sum(n for n, _ in self.prefill_chunks)

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_requests + self.num_decode_draft_tokens

    @property
    def num_requests(self) -> int:
        return len(self.prefill_chunks) + self.num_decode_requests


def _rule(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    """The bounds as text: " > 0", " in [0, 1)", or "" for none."""
    low = f"({gt:g}" if gt is not None else f"[{ge:g}" if ge is not None else ""
    high = f"{lt:g})" if lt is not None else f"{le:g}]" if le is not None else ""
    if low and high:
        return f" in {low}, {high}"
    if gt is not None:
        return f" > {gt:g}"
    if ge is not None:
        return f" >= {ge:g}"
    if lt is not None:
        return f" < {lt:g}"
    return f" <= {le:g}" if le is not None else ""


def short_repr(value: object) -> str:
    """repr(value) for an error message, cut short (a 400-digit int helps nobody there)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:24]}... ({len(text)} characters)"


def check_number(name: str, value: object, *, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None) -> float:
    """`value` unchanged if it is a finite real number within the given bounds; else a
    ValueError naming `name` and the rule: "kv_link_bytes_s must be > 0 and finite, got nan".

    Every number a user hands any layer (config fields, CLI flags, policy and router
    parameters) goes through here, because the natural `if x <= 0: raise` lets NaN through (every
    comparison with NaN is false) and infinities through too. A bool is not a number here; an
    int too large for a float counts as infinite.
    """
    rule = _rule(gt, ge, lt, le)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number{rule}, got {short_repr(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not (math.isfinite(number) and (gt is None or number > gt) and (ge is None or number >= ge)
            and (lt is None or number < lt) and (le is None or number <= le)):
        bounded = (gt is not None or ge is not None) and (lt is not None or le is not None)
        rule = rule if bounded else f"{rule} and finite" if rule else " finite"
        raise ValueError(f"{name} must be{rule}, got {short_repr(value)}")
    return cast(float, value)  # unchanged: an int stays an int, so results are too


def make_from_registry(kind: str, registry: Mapping[str, Callable[..., _T]], name: str,
                       params: Mapping[str, Any]) -> _T:
    """Build `name` from a plugin registry (policies, routers, predictors, ...).

    An unknown name raises ValueError listing the valid names; a bad parameter raises
    ValueError listing the factory's parameters. Every layer's registry goes through here.
    """
    factory = registry.get(name)
    if factory is None:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(registry))}")
    try:
        return factory(**params)
    except TypeError as exc:
        valid = ", ".join(inspect.signature(factory).parameters) or "none"
        raise ValueError(f"bad parameters for {kind} {name!r}: {exc}; valid: {valid}") from None
