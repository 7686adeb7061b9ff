"""Skip-join multi-level feedback queue (FastServe: Wu et al., "Fast Distributed Inference
Serving for Large Language Models", 2023).

Levels 0 (served first) to `num_levels - 1`; level i's quantum is
`base_quantum_tokens * quantum_growth**i` output tokens. Skip-join: a request does not start at
level 0 but at the first level whose prompt allowance holds its prompt, since a long prompt's
first iteration alone would use up the small quanta. FastServe compares the first iteration's
profiled time with the quanta; here the allowance is in prompt tokens: `prompt_quantum_tokens *
quantum_growth**i`, or, from a profile, `prompt_limits_tokens[i]` (the longest prompt whose
prefill fits level i's quantum; prefill time grows faster than the prompt, so a profile sends
very long prompts further down than a geometric allowance). Demotion: after using its
level's quantum of output tokens a request moves down a level. A request's level is therefore
a pure function of its prompt length and its output tokens so far, so the policy keeps no
per-request state and the simulator's bulk decode runs charge exactly what single steps would.

Preemption at token granularity: every step, running requests are served in level order and
a waiting request that cannot fit displaces a running one at least `preemption_threshold`
levels lower (the scheduler's phase 0; a request displaced before is not displaced again until
it has sampled a new token, so there are no preemption storms). Starvation: a request gains one level of credit per
`promote_s` seconds since arrival, i.e. the static key `level * promote_s + arrival_s` (FastServe
promotes a job that has waited past a threshold; continuous credit bounds waiting likewise).
Priorities come first: MLFQ orders requests within a priority.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from shunter.core.request import Request
from shunter.core.sched.policy import KeyedQueue
from shunter.core.types import check_number

__all__ = ["MlfqPolicy"]


@dataclass(slots=True)
class MlfqPolicy:
    num_levels: int = 6
    base_quantum_tokens: int = 16
    quantum_growth: float = 2.0
    prompt_quantum_tokens: int = 512
    # skip-join from a profile: level i admits prompts of at most this many tokens (None:
    # `prompt_quantum_tokens * quantum_growth**i`); longer prompts join the level after the last
    prompt_limits_tokens: Sequence[int] | None = None
    promote_s: float | None = 30.0
    preemption_threshold: float = 1.0
    name: str = "mlfq"
    has_static_order: bool = False  # demotion changes the order as output tokens are charged
    charges_on_schedule: ClassVar[bool] = False  # a no-op: levels follow sampled tokens
    requires_engine: ClassVar[str | None] = (
        "it demotes running requests as they generate and preempts them token by token; at the "
        "gateway nothing runs yet")
    _quanta: tuple[int, ...] = field(init=False, repr=False, default=())
    _prompt_limits: tuple[float, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        for name in ("num_levels", "base_quantum_tokens", "prompt_quantum_tokens",
                     "quantum_growth"):
            check_number(name, getattr(self, name), ge=1)
        if self.promote_s is not None:
            check_number("promote_s", self.promote_s, gt=0)
        check_number("preemption_threshold", self.preemption_threshold, gt=0)
        growth = [self.quantum_growth**i for i in range(self.num_levels)]
        self._quanta = tuple(max(1, round(self.base_quantum_tokens * g)) for g in growth)
        self._prompt_limits = tuple(self.prompt_quantum_tokens * g for g in growth)
        if self.prompt_limits_tokens is not None:
            limits = tuple(self.prompt_limits_tokens)
            for limit in limits:
                check_number("each of prompt_limits_tokens", limit, ge=0)
            if not 1 <= len(limits) <= self.num_levels or any(
                    b < a for a, b in zip(limits, limits[1:], strict=False)) or limits[0] < 0:
                raise ValueError(f"prompt_limits_tokens must be 1 to num_levels ({self.num_levels}) "
                                 f"non-decreasing counts >= 0, got {limits}")
            self._prompt_limits = tuple(float(x) for x in limits)

    def join_level(self, request: Request) -> int:
        """Skip-join: the first level whose prompt allowance holds the prompt."""
        return min(bisect_left(self._prompt_limits, request.num_prompt_tokens), self.num_levels - 1)

    def level(self, request: Request) -> int:
        """The join level, moved down once per quantum of output tokens used."""
        return self._level_and_used(request)[0]

    def _level_and_used(self, request: Request) -> tuple[int, int]:
        """The level, and the output tokens used of its quantum so far."""
        level = self.join_level(request)
        used = request.num_output_tokens
        last = self.num_levels - 1
        while level < last and used >= self._quanta[level]:
            used -= self._quanta[level]
            level += 1
        return level, used

    def _key(self, request: Request) -> tuple[int, float, float]:
        level = self.level(request)
        if self.promote_s is None:
            return (request.priority, float(level), request.arrival_s)
        return (request.priority, level * self.promote_s + request.arrival_s, request.arrival_s)

    def effective_level(self, request: Request, now_s: float) -> float:
        if self.promote_s is None:
            return float(self.level(request))
        return self.level(request) - (now_s - request.arrival_s) / self.promote_s

    def make_queue(self) -> KeyedQueue:
        return KeyedQueue(self._key)  # a waiting request's level cannot change: it gets no tokens

    def victim_key(self, request: Request, now_s: float) -> object:
        return self._key(request)

    def should_preempt(self, waiting: Request, running: Request, now_s: float) -> bool:
        if waiting.priority != running.priority:
            return waiting.priority < running.priority
        # effective_level(running) - effective_level(waiting), in a form free of `now_s` (both
        # gain credit at the same rate), so the answer cannot flip by rounding as time passes
        gap = float(self.level(running) - self.level(waiting))
        if self.promote_s is not None:
            gap += (running.arrival_s - waiting.arrival_s) / self.promote_s
        return gap >= self.preemption_threshold

    def steps_until_reorder(self, running: Sequence[Request]) -> int:
        """Decode steps before a running request uses up its level's quantum: until then no key
        changes (waiting requests get no tokens) and `should_preempt` answers the same."""
        last = self.num_levels - 1
        steps = sys.maxsize
        for request in running:
            level, used = self._level_and_used(request)
            if level < last:
                steps = min(steps, self._quanta[level] - used)
        return steps

    def on_scheduled(self, request: Request, num_tokens: int, now_s: float) -> None:
        pass

    def on_finished(self, request: Request, now_s: float) -> None:
        pass
