"""A request moving between replicas (live migration, prefill -> decode handoff).

A record's token times index into its replica's step timeline (`timeline.py`). When the
request moves, the times it already has are copied out as floats (`array('d')`) and the rest
index into the new replica's timeline: `SplicedTokenTimes` reads like one list. The values are
the very floats both replicas recorded: a move never loses, repeats or shifts a token.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from shunter.core.request import Request
from shunter.core.types import ProbeTrace
from shunter.metrics.record import RequestRecord
from shunter.sim.timeline import StepTimeline, TokenTimes

__all__ = ["MovedRequest", "SplicedTokenTimes"]


@dataclass(slots=True)
class MovedRequest:
    """A request detached from one replica, not yet attached to another. Its token times so far
    are copied out as it leaves: in transit it is live on neither replica, so no trim of the
    old timeline waits for it (a streamed run lost the tokens of requests in transit)."""

    request: Request
    record: RequestRecord
    num_remaining_tokens: int  # true output tokens still to sample (the executor's secret)
    detached_s: float
    probe_trace: ProbeTrace | None = None  # a probed request's certainty trace (also secret)

    def __post_init__(self) -> None:
        self.record.token_times_s = array("d", self.record.token_times_s)

    def continue_on(self, timeline: StepTimeline) -> TokenTimes:
        """Its record's token times: those so far, then `timeline`'s (the new replica's);
        returns the latter, where the new replica records its tokens."""
        done = self.record.token_times_s
        assert isinstance(done, array), "copied out when it left"
        tail = TokenTimes(timeline)
        self.record.token_times_s = SplicedTokenTimes(done, tail)
        return tail


class SplicedTokenTimes(Sequence[float]):
    """Token times already emitted elsewhere (`done`), then ranges of this replica's timeline."""

    __slots__ = ("done", "tail")

    def __init__(self, done: array, tail: TokenTimes) -> None:
        self.done = done
        self.tail = tail

    def add(self, start: int, stop: int) -> None:
        self.tail.add(start, stop)

    @property
    def first_step(self) -> int | None:
        """Timeline index of the first token on this replica: what a trim must keep."""
        return self.tail.first_step

    def __len__(self) -> int:
        return len(self.done) + len(self.tail)

    @overload
    def __getitem__(self, index: int) -> float: ...

    @overload
    def __getitem__(self, index: slice) -> list[float]: ...

    def __getitem__(self, index: int | slice) -> float | list[float]:
        if isinstance(index, slice):
            return self.tolist()[index]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("token index out of range")
        num_done = len(self.done)
        return self.done[index] if index < num_done else self.tail[index - num_done]

    def __iter__(self) -> Iterator[float]:
        yield from self.done
        yield from self.tail

    def tolist(self) -> list[float]:
        return list(self)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate([np.frombuffer(self.done, dtype=np.float64), np.asarray(self.tail)])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence | array):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SplicedTokenTimes({self.tolist()!r})"

