"""Expert-aware batching (Read-ME, Cai et al., "Read-ME: Refactorizing LLMs as Router-Decoupled
Mixture of Experts with System Co-Design", NeurIPS 2024): the `read_me` policy.

The paper decouples a mixture-of-experts model's router from its backbone (one pre-gating
router, run before the model), so the serving system knows each request's experts before it
runs; its scheduler then batches requests that use the same experts (expert-aware batching,
with a lookahead over the queue) and prefetches and caches experts (Belady-style, with the
lookahead's knowledge of what comes next). Claim: mean end-to-end latency up to 6.1% lower
(abstract), tail latency about 10% lower (as summaries of the paper report it).

Here. A request's experts are its `Request.expert_profile` (`core.types.ExpertProfile`: the share
of its token-expert pairs each expert gets), from the workload (`shunter.workload.experts`, or
`expert_profile` in the JSONL). The waiting queue (`ExpertAwareQueue`) looks at the
`lookahead` oldest waiting requests (FCFS order: arrival, then queueing order) and offers the
one whose profile is most alike the experts of what runs now (cosine similarity of its profile
with the summed profiles of the admitted requests not yet finished; a request without a
profile counts as uniform). Ties go to the oldest, so with no profiles (or nothing profiled
running) the order is FCFS exactly. Cosine, not the plain overlap: topics share popular
experts, and the overlap would always favour the profiles most concentrated on those, never
letting the batch settle on one topic's experts. Fairness: each time a request is admitted ahead of older
ones in the window, each of those is bypassed once; one bypassed `max_bypass` times is offered
first, so no request waits more than `max_bypass` admissions beyond its FCFS turn.

What the order reads changes only when a request is queued, admitted, removed or finishes,
never while requests only decode, so the order is static for the simulator's decode runs
(`has_static_order`). Under memory pressure the latest arrival is preempted first (FCFS's
victim); nothing is preempted for order. Not modelled: the paper's expert prefetching and
cache (the simulator's MoE cost model reads every expert a step hits from GPU memory).

Runtimes. The order is pure queue logic, so it runs in every runtime: the engine tier, the
gateway tier (what runs = released to a backend and not finished) and inside vLLM. Live
requests carry no expert profile (no runtime here has a pre-gating router yet), so there it
orders FCFS.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from shunter.core.request import Request
from shunter.core.types import ExpertProfile, RequestId, check_number

__all__ = ["DEFAULT_LOOKAHEAD", "DEFAULT_MAX_BYPASS", "ExpertAwareQueue", "ReadMePolicy"]

# How many of the oldest waiting requests each admission chooses among, and how often a request
# may be passed over. Not from the paper (its lookahead depth is not in the text we could read):
# chosen on benchmarks/repro_read_me.py's 32-seat engine, the best mean and P99 E2E of
# windows 32-128 and bounds 32-256 (a window of 128 holds ~32 requests of each of 4 topics:
# a batch's worth of one).
DEFAULT_LOOKAHEAD = 128
DEFAULT_MAX_BYPASS = 128

_Entry = tuple[float, int, Request]  # (arrival_s, queueing order, request): FCFS order


@dataclass(slots=True)
class ReadMePolicy:
    lookahead: int = DEFAULT_LOOKAHEAD
    max_bypass: int = DEFAULT_MAX_BYPASS
    name: str = "read_me"
    has_static_order: bool = True  # reorders only on queue/admit/finish events (docstring)
    requires_engine: ClassVar[str | None] = None
    charges_on_schedule: ClassVar[bool] = False
    preemptive: ClassVar[bool] = False
    victim_key_reads_progress: ClassVar[bool] = False
    _queue: ExpertAwareQueue | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("lookahead", "max_bypass"):
            value = getattr(self, name)
            check_number(name, value, ge=1)
            if int(value) != value:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
            setattr(self, name, int(value))

    def make_queue(self) -> ExpertAwareQueue:
        self._queue = ExpertAwareQueue(self.lookahead, self.max_bypass)
        return self._queue

    def victim_key(self, request: Request, now_s: float) -> object:
        return request.arrival_s

    def should_preempt(self, waiting: Request, running: Request, now_s: float) -> bool:
        return False

    def on_scheduled(self, request: Request, num_tokens: int, now_s: float) -> None:
        pass

    def on_finished(self, request: Request, now_s: float) -> None:
        if self._queue is not None:
            self._queue.forget(request)


class ExpertAwareQueue:
    """FCFS entries plus the admitted requests' profiles; the head is the best-overlapping of
    the oldest `lookahead` (module docstring), computed when asked and kept until a change."""

    __slots__ = ("_bypassed", "_entries", "_head", "_is_stale", "_lookahead", "_max_bypass",
                 "_next_seq", "_queued", "_running")

    def __init__(self, lookahead: int, max_bypass: int) -> None:
        self._lookahead = lookahead
        self._max_bypass = max_bypass
        self._entries: list[_Entry] = []  # sorted: FCFS order
        self._queued: dict[RequestId, _Entry] = {}
        self._next_seq = 0
        self._running: dict[RequestId, ExpertProfile | None] = {}  # admitted, not finished
        self._bypassed: dict[RequestId, int] = {}  # queued requests passed over so far
        self._head: int | None = None  # index into _entries of the request to offer
        self._is_stale = True

    # ---- WaitingQueue ------------------------------------------------------------------------

    def add(self, request: Request) -> None:
        rid = request.request_id
        self._running.pop(rid, None)  # preempted: back in the queue
        self._next_seq += 1
        entry = (request.arrival_s, self._next_seq, request)
        bisect.insort(self._entries, entry, key=_fcfs_key)
        self._queued[rid] = entry
        self._is_stale = True

    def peek(self) -> Request | None:
        index = self._head_index()
        return None if index is None else self._entries[index][2]

    def pop(self) -> Request:
        index = self._head_index()
        assert index is not None, "pop from an empty expert-aware queue"
        entries = self._entries
        for _, _, older in entries[:index]:  # each older one in the window was passed over
            rid = older.request_id
            self._bypassed[rid] = self._bypassed.get(rid, 0) + 1
        request = entries.pop(index)[2]
        rid = request.request_id
        del self._queued[rid]
        self._bypassed.pop(rid, None)
        self._running[rid] = request.expert_profile
        self._is_stale = True
        return request

    def remove(self, request: Request) -> None:
        entry = self._queued.pop(request.request_id, None)
        if entry is not None:
            del self._entries[bisect.bisect_left(self._entries, _fcfs_key(entry), key=_fcfs_key)]
            self._bypassed.pop(request.request_id, None)
            self._is_stale = True

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Request]:
        """Queued requests in FCFS order (read-only)."""
        return iter([entry[2] for entry in self._entries])

    # ---- the policy's view ---------------------------------------------------------------------

    def forget(self, request: Request) -> None:
        """The request left (finished, aborted, detached): its experts no longer run."""
        rid = request.request_id
        if self._running.pop(rid, None) is not None:
            self._is_stale = True
        self.remove(request)

    def num_bypassed(self, request: Request) -> int:
        """How often a queued request has been passed over."""
        return self._bypassed.get(request.request_id, 0)

    def _head_index(self) -> int | None:
        if self._is_stale:
            self._head = self._choose()
            self._is_stale = False
        return self._head

    def _choose(self) -> int | None:
        entries = self._entries
        if not entries:
            return None
        window = entries[:self._lookahead]
        for index, (_, _, request) in enumerate(window):  # the oldest overdue one first
            if self._bypassed.get(request.request_id, 0) >= self._max_bypass:
                return index
        mass = self._running_mass()
        if mass is None:
            return 0
        norm = math.sqrt(overlap(tuple(mass), mass))
        uniform = math.fsum(mass) / (math.sqrt(len(mass)) * norm)
        best, best_score = 0, -1.0
        for index, (_, _, request) in enumerate(window):
            profile = request.expert_profile
            score = uniform if profile is None else similarity(profile, mass, norm)
            if score > best_score:  # (strictly: ties keep the oldest)
                best, best_score = index, score
        return best

    def _running_mass(self) -> list[float] | None:
        """Each expert's summed share over the running requests with profiles (None if none);
        fsum, so the same set gives the same floats in any order."""
        profiles = [p.weights for p in self._running.values() if p is not None]
        if not profiles:
            return None
        width = min(len(w) for w in profiles)
        return [math.fsum(w[e] for w in profiles) for e in range(width)]


def similarity(profile: ExpertProfile, mass: list[float], mass_norm: float) -> float:
    """Cosine similarity of a profile with the running requests' summed profiles: how alike
    their spreads are, whatever their size (a profile leaning on the experts the batch leans
    on, in the same proportions, scores 1)."""
    norm = math.sqrt(overlap(profile.weights, list(profile.weights)))
    return overlap(profile.weights, mass) / (norm * mass_norm)


def overlap(weights: tuple[float, ...], mass: list[float]) -> float:
    """How much of a profile falls on the experts `mass` weighs (their dot product)."""
    total = 0.0
    for w, m in zip(weights, mass, strict=False):
        total += w * m
    return total


def _fcfs_key(entry: _Entry) -> tuple[float, int]:
    return (entry[0], entry[1])
