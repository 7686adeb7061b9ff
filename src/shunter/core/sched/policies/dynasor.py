"""Dynasor (Fu et al., "Efficiently Serving LLM Reasoning Programs with Certaindex", arXiv
2412.20993): reasoning programs served by how settled their answers already are.

A reasoning program (self-consistency, best-of-n) is one query whose branches are sampled in
parallel; they share `program_id` (a request without one is a program of one branch, Dynasor's
single-chain CoT case). Every `probe_tokens` generated tokens the executor probes a branch and
reports a certainty value (`StepResult.probes`: in the simulator the program's Certaindex read
from its trace, in an engine a measure of the branch's own tokens). The program's Certaindex at
probe round k is the mean of the values its branches reported at round k, taken once every
live branch has reached round k (the gang's round; a branch that already ended has its answer).
At each new gang round:

- early exit: Certaindex >= `threshold` ends every live branch of the program now, running or
  queued (`FinishReason.EARLY_STOP`): its answer has settled, later tokens would not change it
  (the paper's "answer stabilization"; thresholds calibrated per workload, its Table 3);
- hard programs: once the round reaches `budget_tokens` per branch with Certaindex still below
  `low_certainty`, the program is judged hard (low certainty predicts much more compute, often
  without a right answer: the paper's Fig. 5 and 12). It is deprioritized: its queued branches go
  after every other program's, and a queued branch of another program may take a running hard
  branch's seat; with `stop_hard` it is ended instead (its compute capped);
- gang scheduling: a program's branches share one ordering key, so they are admitted together
  and preempted together, and the gang's round keeps a program that left branches behind ahead;
- program order: `order = "las"` is least attained service on programs counted in gang rounds
  (the program whose branches have all generated least goes first; ties by arrival): a
  non-clairvoyant stand-in for the paper's approximate SJF, whose starvation guard (priority
  escalation) it needs less, since a round is a fixed amount of service; `order = "fcfs"` is
  program arrival (Parrot's App-FIFO gang order, the paper's other baseline). Only a hard
  program's branches are preempted for another's, so among programs that have not run LAS is
  arrival order; it reorders programs whose branches were preempted or swapped out.

Keys change only at probe results and when a branch ends, never while branches only decode
between probe points: the simulator's bulk decode runs stop before each probe step, so the
policy sees every probe (`sim.replica`). Nothing is charged when scheduled.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from shunter.core.request import Request
from shunter.core.sched.policies.plas import ScanQueue, program_of
from shunter.core.types import RequestId, RequestStatus, check_number

__all__ = ["DynasorPolicy", "GangQueue", "ProgramState"]

ORDERS = ("las", "fcfs")


@dataclass(slots=True)
class ProgramState:
    """What the policy knows of one program: its live branches and the probes reported."""

    arrival_s: float
    seq: int  # when the policy first saw it (ties between programs arriving together)
    branches: dict[RequestId, Request] = field(default_factory=dict)  # live ones, first seen first
    sums: dict[int, tuple[float, int]] = field(default_factory=dict)  # round -> (sum, count)
    round: int = 0  # the gang's latest round with a Certaindex
    certainty: float | None = None  # the Certaindex at `round`
    is_hard: bool = False

    @property
    def has_queued(self) -> bool:
        return any(b.status != RequestStatus.RUNNING for b in self.branches.values())


class GangQueue(ScanQueue):
    """The waiting queue, telling the policy of each request it queues (its program's branch)."""

    __slots__ = ("_on_add",)

    def __init__(self, key: Callable[[Request], tuple[float, ...]],
                 on_add: Callable[[Request], object]) -> None:
        super().__init__(key)
        self._on_add = on_add

    def add(self, request: Request) -> None:
        self._on_add(request)
        super().add(request)


@dataclass(slots=True)
class DynasorPolicy:
    threshold: float = 0.5  # Certaindex at which a program's answer counts as settled
    probe_tokens: int = 32  # generated tokens between probes (the paper probes every 32-64)
    low_certainty: float = 0.3  # below it at `budget_tokens` a program is hard
    budget_tokens: int | None = None  # tokens per branch before hard programs are judged
    stop_hard: bool = False  # end hard programs (a cap) instead of deprioritizing them
    order: str = "las"
    name: str = "dynasor"
    has_static_order: bool = False  # keys follow probe rounds and hard verdicts
    charges_on_schedule: ClassVar[bool] = False
    requires_engine: ClassVar[str | None] = (
        "it ends running requests from the probes an engine's executor reports; at the gateway "
        "nothing runs yet")
    programs: dict[str, ProgramState] = field(default_factory=dict, init=False, repr=False)
    _num_seen: int = field(default=0, init=False, repr=False)
    _queue: GangQueue | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_number("threshold", self.threshold, gt=0, le=1)
        check_number("low_certainty", self.low_certainty, ge=0, le=1)
        self.probe_tokens = _whole("probe_tokens", self.probe_tokens)
        if self.budget_tokens is not None:
            self.budget_tokens = _whole("budget_tokens", self.budget_tokens)
            if self.low_certainty >= self.threshold:  # (a hard verdict needs room below it)
                raise ValueError(f"low_certainty must be below threshold ({self.threshold}) "
                                 f"when budget_tokens is set, got {self.low_certainty}")
        if not isinstance(self.stop_hard, bool):
            raise ValueError(f"stop_hard must be true or false, got {self.stop_hard!r}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")

    # ---- order ---------------------------------------------------------------------------

    def program(self, request: Request) -> ProgramState:
        """The request's program, registering the request as one of its live branches."""
        program_id = program_of(request)
        program = self.programs.get(program_id)
        if program is None:
            program = self.programs[program_id] = ProgramState(request.arrival_s, self._num_seen)
            self._num_seen += 1
        program.branches.setdefault(request.request_id, request)
        return program

    def key(self, request: Request) -> tuple[float, ...]:
        program = self.program(request)
        level = program.round if self.order == "las" else 0
        return (request.priority, program.is_hard, level, program.arrival_s, program.seq)

    def make_queue(self) -> GangQueue:
        self._queue = GangQueue(self.key, self.program)
        return self._queue

    def victim_key(self, request: Request, now_s: float) -> object:
        return self.key(request)

    def should_preempt(self, waiting: Request, running: Request, now_s: float) -> bool:
        """Only a hard program's running branch gives way, to another program's branch."""
        return (self.program(running).is_hard and not self.program(waiting).is_hard
                and waiting.priority <= running.priority)

    def steps_until_reorder(self, running: Sequence[Request]) -> int:
        """Decode steps until a running request reaches its next probe point: keys change only
        at probe results (and when a branch ends, which ends a run anyway)."""
        interval = self.probe_tokens
        steps = sys.maxsize
        for request in running:
            steps = min(steps, interval - request.num_output_tokens % interval)
        return steps

    # ---- probes --------------------------------------------------------------------------

    def early_stops(self, probes: Sequence[tuple[Request, float]], now_s: float
                    ) -> list[Request]:
        touched: dict[int, ProgramState] = {}
        for request, value in probes:
            program = self.program(request)
            k = request.num_output_tokens // self.probe_tokens
            total, count = program.sums.get(k, (0.0, 0))
            program.sums[k] = (total + value, count + 1)
            touched[program.seq] = program
        stops: list[Request] = []
        for program in touched.values():
            stops.extend(self._decide(program))
        return stops

    def _decide(self, program: ProgramState) -> list[Request]:
        """At a new gang round: the branches to end now (all or none), and a hard verdict."""
        k = min(b.num_output_tokens for b in program.branches.values()) // self.probe_tokens
        if k <= program.round or k not in program.sums:
            return []  # the gang has not completed a new round
        total, count = program.sums[k]
        program.round, program.certainty = k, total / count
        for done in [j for j in program.sums if j < k]:
            del program.sums[done]
        if program.certainty >= self.threshold:
            return list(program.branches.values())
        if (not program.is_hard and self.budget_tokens is not None
                and k * self.probe_tokens >= self.budget_tokens
                and program.certainty < self.low_certainty):
            if self.stop_hard:
                return list(program.branches.values())
            program.is_hard = True
        if self._queue is not None and program.has_queued:
            self._queue.invalidate()  # its queued branches' round (or verdict) changed
        return []

    # ---- charging ------------------------------------------------------------------------

    def on_scheduled(self, request: Request, num_tokens: int, now_s: float) -> None:
        pass

    def on_finished(self, request: Request, now_s: float) -> None:
        program_id = program_of(request)
        program = self.programs.get(program_id)
        if program is None or program.branches.pop(request.request_id, None) is None:
            return  # (rejected on arrival: never queued)
        if not program.branches:
            del self.programs[program_id]


def _whole(name: str, value: float) -> int:
    """A whole number of tokens >= 1, as an int."""
    check_number(name, value, ge=1)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be a whole number of tokens, got {value!r}")
    return int(value)
