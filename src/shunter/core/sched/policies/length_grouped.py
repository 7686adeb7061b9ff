"""Length-grouped sequence scheduling (Zheng et al., "Response Length Perception and Sequence
Scheduling: An LLM-Empowered LLM Inference Pipeline", NeurIPS 2023): the `length_grouped` policy.

The paper (read from its text and its artifact, github zhengzangw/Sequence-Scheduling,
`src/utils.py:schedule` and `src/generate.py:generate_group`):
- an LLM predicts each response's length before generating it (here: any `core.predict`
  predictor, through `Request.predicted_output_tokens`);
- a *group* of queued queries (256 in the artifact) is sorted by predicted length and cut into
  micro-batches; a micro-batch runs to the end of its longest member (static batching);
- Variable Batch Size (VBS): predictions are rounded up to 50-token bins, each bin is batched
  with a size that shrinks as the bin grows (256, 128, 64, 32 for bins 50 to 200, then 16);
  a bin's last, small batch (under max(size / 2, 16)) joins the next bin instead;
  without VBS, the sorted group is cut into batches of 16 and a batch's length is its largest
  prediction;
- Failure Collection and Recomputation (FCR): a batch generates at most its predicted length;
  a member that has not finished by then is stopped, collected, and recomputed after the
  group's batches, in batches of 16 with the full length limit;
- vanilla batching (the baseline) is the same machinery with every prediction equal to the
  length limit: batches of 16 in arrival order, each run until its longest member ends.
Claim: up to 86% higher throughput than vanilla batching (Vicuna-7B, Alpaca, 1 GPU).

Ours, where the paper is silent or its setting differs (an offline pool against an online,
token-budget engine with continuous batching underneath):
- Groups online: when a group's batches and its failures are all admitted, the next group is
  the first `group_size` requests that arrived since (FIFO; `priority` is not read, the paper
  has none). Within a group, requests sort by prediction, then arrival.
- `static_batches` (default, the paper's): the waiting queue offers nothing while any member of
  the current micro-batch runs, so the engine runs one micro-batch at a time and the next
  starts when the last member ends or fails; members that do not all fit in the KV cache at
  once are admitted as others end (the batch is still one unit). Off: the engine batches
  continuously and the group plan only orders admission (what is left of length grouping under
  vLLM-like batching).
- FCR is a preemption (`RecallingPolicy.recalls`, a scheduler hook): before each step, a
  running request with as many outputs as its batch's length is preempted by the scheduler's
  own mechanism (recompute or swap) and queued with the group's failures; re-run without a
  limit, it keeps its outputs, so recomputing costs a prefill of prompt + partial output, not
  the paper's regeneration from scratch.
- A request without a prediction sorts and bins as its `max_output_tokens` (else
  `unknown_output_tokens`, the artifact's 512) and is never failed. A prediction of 0 takes the
  first bin.
- Under memory pressure the latest admitted is preempted first; nothing preempts for priority.
- At the gateway tier (`core.sched.gateway_queue`) nothing runs and nothing can be stopped:
  with `static_batches` the policy needs an engine (`requires_engine`); without, the gateway
  releases requests in group order and FCR does not apply there.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from shunter.core.request import Request
from shunter.core.types import RequestId, RequestStatus, check_number

__all__ = ["PAPER_VBS_BATCH_SIZES", "GroupQueue", "LengthGroupedPolicy"]

PAPER_VBS_BATCH_SIZES = (256, 128, 64, 32, 16)  # artifact's len_bs_dict: bins 50..200, then 16
PAPER_BIN_TOKENS = 50  # artifact's buckit(cell=50)
PAPER_BATCH_SIZE = 16  # artifact's --batch-size (and VBS's floor for a bin's last batch)
PAPER_GROUP_SIZE = 256  # artifact's --group-size
PAPER_MAX_LENGTH = 512  # artifact's --max-length
_STATIC_REASON = ("with static_batches it holds the next micro-batch back until the running one "
                  "has ended, and stops (recomputes) requests that outrun their batch's length; "
                  "a gateway releases whenever a slot frees and can stop nothing. Set "
                  "static_batches=false to order the gateway's queue by groups")

Batch = tuple[list[Request], int | None]  # members, output tokens each may generate (FCR)


@dataclass(slots=True)
class LengthGroupedPolicy:
    bin_tokens: int = PAPER_BIN_TOKENS
    batch_size: int = PAPER_BATCH_SIZE
    # VBS: batch size of the i-th bin (the last entry for all longer bins); None: VBS off
    vbs_batch_sizes: Sequence[int] | None = PAPER_VBS_BATCH_SIZES
    group_size: int = PAPER_GROUP_SIZE
    fcr: bool = True
    static_batches: bool = True
    unknown_output_tokens: int = PAPER_MAX_LENGTH
    name: str = "length_grouped"
    has_static_order: bool = False  # the head moves as batches end; FCR bounds decode runs
    charges_on_schedule: ClassVar[bool] = False  # nothing is charged
    preemptive: ClassVar[bool] = False  # no priority preemption (FCR is `recalls`)
    victim_key_reads_progress: ClassVar[bool] = False  # admission order only
    _queue: GroupQueue | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("bin_tokens", "batch_size", "group_size", "unknown_output_tokens"):
            value = getattr(self, name)
            check_number(name, value, ge=1)
            if int(value) != value:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
            setattr(self, name, int(value))
        for name in ("fcr", "static_batches"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.vbs_batch_sizes is not None:
            sizes = self.vbs_batch_sizes
            if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence) or not sizes:
                raise ValueError("vbs_batch_sizes must be a non-empty list of batch sizes (one "
                                 f"per length bin) or None, got {sizes!r}")
            for size in sizes:
                check_number("each of vbs_batch_sizes", size, ge=1)
                if int(size) != size:
                    raise ValueError(f"each of vbs_batch_sizes must be a whole number, got {size!r}")
            self.vbs_batch_sizes = tuple(int(s) for s in sizes)

    @property
    def requires_engine(self) -> str | None:  # type: ignore[override]
        """Why the gateway tier cannot run this configuration (see the module docstring)."""
        return _STATIC_REASON if self.static_batches else None

    # ---- grouping (the artifact's `schedule`) ------------------------------------------------

    def sort_tokens(self, request: Request) -> float:
        """The length a request is grouped by: its prediction, else its limit."""
        if request.predicted_output_tokens is not None:
            return max(request.predicted_output_tokens, 0.0)
        if request.max_output_tokens is not None:
            return float(request.max_output_tokens)
        return float(self.unknown_output_tokens)

    def bin_of(self, request: Request) -> int:
        """The prediction rounded up to a whole bin (at least one bin), in tokens."""
        tokens = self.sort_tokens(request)
        return max(1, -int(-tokens // self.bin_tokens)) * self.bin_tokens

    def vbs_size(self, bin_tokens: int) -> int:
        sizes = self.vbs_batch_sizes
        assert sizes is not None
        return sizes[min(bin_tokens // self.bin_tokens - 1, len(sizes) - 1)]

    def plan(self, group: Sequence[Request]) -> list[Batch]:
        """A group's micro-batches in run order, each with its FCR length (None: no limit)."""
        ranked = sorted(group, key=self.sort_tokens)  # stable: ties keep arrival order
        batches: list[tuple[list[Request], int]] = []
        if self.vbs_batch_sizes is None:
            for start in range(0, len(ranked), self.batch_size):
                chunk = ranked[start:start + self.batch_size]
                batches.append((chunk, max(1, math.ceil(max(map(self.sort_tokens, chunk))))))
        else:
            by_bin: dict[int, list[Request]] = {}
            for request in ranked:
                by_bin.setdefault(self.bin_of(request), []).append(request)
            bins = sorted(by_bin)
            for index, b in enumerate(bins):
                members, size = by_bin[b], self.vbs_size(b)
                for start in range(0, len(members), size):
                    chunk = members[start:start + size]
                    # a small last batch joins the next bin (a full one never counts as small)
                    if index + 1 < len(bins) and len(chunk) < min(size, max(size // 2,
                                                                             self.batch_size)):
                        by_bin[bins[index + 1]].extend(chunk)
                        break
                    batches.append((chunk, b))
        # (a merged tail sorts with the bin it joined: the order matters without static batches)
        return [(sorted(chunk, key=self.sort_tokens), limit if self.fcr else None)
                for chunk, limit in batches]

    # ---- the Policy interface ----------------------------------------------------------------

    def make_queue(self) -> GroupQueue:
        self._queue = GroupQueue(self)
        return self._queue

    def victim_key(self, request: Request, now_s: float) -> object:
        return self._queue.admission_seq(request) if self._queue is not None else sys.maxsize

    def should_preempt(self, waiting: Request, running: Request, now_s: float) -> bool:
        return False

    def recalls(self, running: Sequence[Request]) -> list[Request]:
        """FCR: the running requests that used up their batch's length without finishing."""
        if self._queue is None or not self.fcr:
            return []
        return [r for r in running if self._queue.has_overrun(r)]

    def steps_until_reorder(self, running: Sequence[Request]) -> int:
        """Decode steps before a running request reaches its batch's length (a recall). The
        head moves only when a request ends or is preempted (which end runs); an arrival only
        joins the next group's preview (`GroupQueue`), never the batches planned."""
        if self._queue is None or not self.fcr:
            return sys.maxsize
        return self._queue.steps_to_overrun(running)

    def on_scheduled(self, request: Request, num_tokens: int, now_s: float) -> None:
        pass

    def on_finished(self, request: Request, now_s: float) -> None:
        if self._queue is not None:
            self._queue.forget(request)


class GroupQueue:
    """The waiting queue of `LengthGroupedPolicy`: the current micro-batch's members left to
    admit, the group's planned batches, the collected failures, and the arrivals of the next
    group, admitted in that order. Removal is lazy (an entry is live while `_seq` holds it).

    The next group is planned when its first request is admitted (`pop`), from the arrivals
    queued then; `peek` only previews that plan (cached until the next arrival). So the groups
    depend on the order of arrivals and admissions alone, never on how often a runtime looks at
    the head (the simulator's decode runs look less often than single steps do)."""

    __slots__ = ("_admitted", "_batches", "_failed", "_in_flight", "_limit", "_next_seq",
                 "_pending", "_policy", "_preview", "_ready", "_seq", "num_failures",
                 "num_groups")

    def __init__(self, policy: LengthGroupedPolicy) -> None:
        self._policy = policy
        self._seq: dict[RequestId, int] = {}  # queued request -> its live entry's number
        self._next_seq = 0
        self._pending: deque[tuple[int, Request]] = deque()  # arrived, for the next group
        self._preview: list[Batch] | None = None  # the next group's plan, as `pop` would make it
        self._ready: deque[tuple[int, Request]] = deque()  # the current batch, to admit
        self._batches: deque[Batch] = deque()  # the group's batches still to start
        self._failed: deque[Request] = deque()  # FCR: collected, recomputed after the group
        self._limit: dict[RequestId, int | None] = {}  # batch length of planned requests
        self._in_flight: set[RequestId] = set()  # admitted from here, not ended or back
        self._admitted: dict[RequestId, int] = {}  # admission order (victim key)
        self.num_failures = 0  # FCR recalls so far
        self.num_groups = 0

    def _entry(self, request: Request) -> tuple[int, Request]:
        self._next_seq += 1
        self._seq[request.request_id] = self._next_seq
        return (self._next_seq, request)

    def _is_live(self, entry: tuple[int, Request]) -> bool:
        return self._seq.get(entry[1].request_id) == entry[0]

    # ---- WaitingQueue ------------------------------------------------------------------------

    def add(self, request: Request) -> None:
        rid = request.request_id
        self._in_flight.discard(rid)
        if request.status == RequestStatus.WAITING:
            self._pending.append(self._entry(request))
            self._preview = None
        elif self.has_overrun(request):  # recalled by FCR (or preempted at its length anyway)
            self.num_failures += 1
            self._limit[rid] = None
            self._entry(request)
            self._failed.append(request)
        else:  # preempted for memory: resumes first, within its batch
            self._ready.appendleft(self._entry(request))

    def peek(self) -> Request | None:
        ready = self._ready
        while True:
            while ready and not self._is_live(ready[0]):
                ready.popleft()
            if ready:
                return ready[0][1]
            if self._policy.static_batches and self._in_flight:
                return None  # the running micro-batch has not ended
            if not self._batches and not self._failed:
                preview = self._next_group_plan()
                return preview[0][0][0] if preview else None
            self._start_batch()

    def pop(self) -> Request:
        request = self.peek()
        assert request is not None, "pop from an empty (or closed) length-grouped queue"
        if not self._ready:  # the head opens the next group: plan it now
            self._commit_group()
            self._start_batch()
        entry = self._ready.popleft()
        assert entry[1] is request, "the group's plan moved under its preview"
        rid = request.request_id
        del self._seq[rid]
        self._in_flight.add(rid)
        self._next_seq += 1
        self._admitted[rid] = self._next_seq
        return request

    def remove(self, request: Request) -> None:
        if self._seq.pop(request.request_id, None) is not None:
            self._preview = None
        self.forget(request)

    def __len__(self) -> int:
        return len(self._seq)

    def __iter__(self) -> Iterator[Request]:
        """Live requests in admission order (read-only: plans no group)."""
        seen: set[RequestId] = set()
        entries = [*self._ready,
                   *((self._seq.get(r.request_id, -1), r) for b in self._batches for r in b[0]),
                   *((self._seq.get(r.request_id, -1), r) for r in self._failed),
                   *self._pending]
        out = []
        for entry in entries:
            rid = entry[1].request_id
            if self._is_live(entry) and rid not in seen:
                seen.add(rid)
                out.append(entry[1])
        return iter(out)

    # ---- batches and groups ------------------------------------------------------------------

    def _start_batch(self) -> None:
        """Make the next micro-batch ready: the group's next, else a batch of failures."""
        if not self._batches:
            chunk = [self._failed.popleft()
                     for _ in range(min(self._policy.batch_size, len(self._failed)))]
            self._batches.append((chunk, None))
        members, limit = self._batches.popleft()
        for request in members:
            rid = request.request_id
            if rid in self._seq:  # not removed meanwhile
                self._ready.append((self._seq[rid], request))
                if request.predicted_output_tokens is not None:
                    self._limit[rid] = limit

    def _next_group(self) -> list[Request]:
        """The live arrivals the next group takes (the first `group_size`), dropping dead ones."""
        pending = self._pending
        while pending and not self._is_live(pending[0]):
            pending.popleft()
        group: list[Request] = []
        for entry in pending:
            if len(group) == self._policy.group_size:
                break
            if self._is_live(entry):
                group.append(entry[1])
        return group

    def _next_group_plan(self) -> list[Batch]:
        if self._preview is None:
            self._preview = [b for b in self._policy.plan(self._next_group()) if b[0]]
        return self._preview

    def _commit_group(self) -> None:
        plan = self._next_group_plan()
        taken = sum(len(members) for members, _ in plan)
        while taken:
            if self._is_live(self._pending.popleft()):
                taken -= 1
        self._preview = None
        self.num_groups += 1
        self._batches.extend(plan)

    # ---- the policy's view of running requests -----------------------------------------------

    def has_overrun(self, request: Request) -> bool:
        limit = self._limit.get(request.request_id)
        return limit is not None and request.num_output_tokens >= limit

    def steps_to_overrun(self, running: Sequence[Request]) -> int:
        steps = sys.maxsize
        for request in running:
            limit = self._limit.get(request.request_id)
            if limit is not None:
                steps = min(steps, max(limit - request.num_output_tokens, 0))
        return steps

    def admission_seq(self, request: Request) -> int:
        return self._admitted.get(request.request_id, sys.maxsize)

    def forget(self, request: Request) -> None:
        """The request left (finished, aborted, detached): it no longer holds its batch."""
        rid = request.request_id
        self._in_flight.discard(rid)
        self._limit.pop(rid, None)
        self._admitted.pop(rid, None)
