"""Agent programs built from multi-turn ShareGPT conversations (the Autellix-style workload).

Each conversation is one program: its turns are the program's LLM calls, in order, and every
call's prompt is the conversation so far (the ShareGPT loader's multi-turn requests, so call
k + 1 starts with the blocks call k filled: a prefix cache that kept them serves them). Calls
carry `program_id` = `session_id` = the conversation id.

Closed loop, as a single-threaded agent runs: a program's first call arrives at a Poisson
time (`rate` programs/s); call k + 1 is issued `think_time_s` after call k finishes (the time a
tool or a user takes; 0 by default). The simulator releases such dependent calls itself
(`simulate(..., follow_ups=...)`), so a scheduler that finishes a program's calls sooner also
brings its later calls sooner, which is what program-level scheduling exploits. Program
latency is the time from the first call's arrival to the last call's finish.

`min_calls` / `max_calls` pick conversations by their number of turns (more turns = a longer
program); conversations are taken in file order. Multi-threaded programs (stages of parallel
calls behind barriers) are made by `shunter.workload.staged_program`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from shunter.core.types import RequestId, RequestSpec
from shunter.errors import ConfigError
from shunter.workload.arrival import STREAM_ARRIVALS, arrival_times, seeded_rng
from shunter.workload.loaders import iter_workload
from shunter.workload.parse import ZeroLengthWarning

__all__ = ["FollowUp", "FollowUps", "ProgramWorkload", "agent_programs", "check_program_args",
           "followers"]


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A call issued `delay_s` after the call it follows finishes (its arrival_s is replaced).

    A barrier: with `num_dependencies` = n > 1, the same follow-up is listed under n calls and
    issued `delay_s` after the last of them finishes (a stage of a multi-threaded program waits
    for all calls of the stage before it)."""

    spec: RequestSpec
    delay_s: float = 0.0
    num_dependencies: int = 1

    def __post_init__(self) -> None:
        if self.num_dependencies < 1:
            raise ValueError(f"follow-up {self.spec.request_id}: num_dependencies must be >= 1, "
                             f"got {self.num_dependencies}")


# Per call id, the call, or the calls, that wait for it.
FollowUps = Mapping[RequestId, FollowUp | tuple[FollowUp, ...]]


def followers(entry: FollowUp | tuple[FollowUp, ...]) -> tuple[FollowUp, ...]:
    """The calls of one `FollowUps` entry, as a tuple."""
    return (entry,) if isinstance(entry, FollowUp) else entry


@dataclass(frozen=True, slots=True)
class ProgramWorkload:
    """First calls (sorted by arrival) and, per call id, the call(s) that wait for it."""

    first_calls: list[RequestSpec]
    follow_ups: dict[RequestId, FollowUp | tuple[FollowUp, ...]]

    @property
    def num_programs(self) -> int:
        return len({s.program_id for s in self.first_calls})

    @property
    def num_calls(self) -> int:
        later = {f.spec.request_id for entry in self.follow_ups.values() for f in followers(entry)}
        return len(self.first_calls) + len(later)


def _first_sessions(path: str | Path, num_programs: int, min_calls: int,
                    ) -> Iterator[RequestSpec]:
    """Turns of the file's leading conversations, enough to find `num_programs` long enough."""
    found = 0
    session: str | None = None
    num_turns = 0
    for spec in iter_workload(path, "sharegpt", zero_tokens="clamp"):
        if spec.session_id != session:
            found += num_turns >= min_calls
            if found == num_programs:
                return
            session, num_turns = spec.session_id, 0
        num_turns += 1
        yield spec


def _conversations(path: str | Path, num_programs: int, min_calls: int, max_calls: int | None,
                   ) -> list[list[RequestSpec]]:
    """The first `num_programs` conversations with at least `min_calls` turns, cut at `max_calls`."""
    programs: list[list[RequestSpec]] = []
    current: list[RequestSpec] = []

    def close() -> None:
        if len(current) >= min_calls:
            programs.append(current[:max_calls])

    with warnings.catch_warnings():  # empty turns are expected: an agent step may say nothing
        warnings.simplefilter("ignore", ZeroLengthWarning)
        specs = list(_first_sessions(path, num_programs, min_calls))
    for spec in specs:
        if current and spec.session_id != current[0].session_id:
            close()
            current = []
            if len(programs) == num_programs:
                return programs
        current.append(spec)
    if current and len(programs) < num_programs:
        close()
    return programs


def check_program_args(num_programs: int, rate: float, think_time_s: float) -> None:
    """The arguments every program generator takes, validated (ConfigError names the bad one)."""
    if num_programs < 1:
        raise ConfigError(f"num_programs must be >= 1, got {num_programs}")
    if not (rate > 0 and math.isfinite(rate)):
        raise ConfigError(f"rate must be a finite number > 0 programs/s, got {rate}")
    if not (think_time_s >= 0 and math.isfinite(think_time_s)):
        raise ConfigError(f"think_time_s must be a finite number >= 0, got {think_time_s}")


def agent_programs(path: str | Path, *, num_programs: int, rate: float, think_time_s: float = 0.0,
                   min_calls: int = 1, max_calls: int | None = None, seed: int = 0,
                   ) -> ProgramWorkload:
    """Closed-loop programs from a ShareGPT turn-length file (see the module docstring)."""
    check_program_args(num_programs, rate, think_time_s)
    if min_calls < 1 or (max_calls is not None and max_calls < min_calls):
        raise ConfigError(f"need 1 <= min_calls <= max_calls, got {min_calls}, {max_calls}")
    programs = _conversations(path, num_programs, min_calls, max_calls)
    if len(programs) < num_programs:
        raise ConfigError(f"{path} holds only {len(programs)} conversations with >= {min_calls} "
                          f"turns, {num_programs} asked for")
    starts = arrival_times(num_programs, seeded_rng(seed, STREAM_ARRIVALS), rate)
    first_calls: list[RequestSpec] = []
    follow_ups: dict[RequestId, FollowUp] = {}
    for p, (calls, start_s) in enumerate(zip(programs, starts, strict=True)):
        specs = [replace(spec, request_id=f"p{p}c{k}", arrival_s=float(start_s),
                         program_id=spec.session_id) for k, spec in enumerate(calls)]
        first_calls.append(specs[0])
        for before, after in zip(specs, specs[1:], strict=False):
            follow_ups[before.request_id] = FollowUp(after, think_time_s)
    return ProgramWorkload(first_calls, follow_ups)

