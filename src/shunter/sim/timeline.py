"""Token times as index ranges over a replica's step timeline, instead of one float per token.

Every token a replica emits is emitted at the end of one of its steps, and a decoding request
gets a token at every step until something interrupts it (a prefill-first step, a preemption,
its end). So a replica keeps one `array('d')` of step end times (`StepTimeline`), and each
request's token times are a few `[start, stop)` ranges of that array (`TokenTimes`): about 16
bytes per interruption instead of 8 bytes per token (a list of floats costs ~32 per token).

`TokenTimes` reads like the list it replaces (len, indexing, iteration, equality, numpy
conversion), so metrics code is unchanged. The values are the very floats step-by-step
recording stores; nothing is recomputed.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np

__all__ = ["StepTimeline", "TokenTimes", "add_range"]


class StepTimeline:
    """End times of the steps a replica applied, in order.

    Indices are global and never reused. A streamed run, which hands finished records off and
    forgets them, `trim`s the steps no live request can still read; `times_s[i - base]` holds
    step i.
    """

    __slots__ = ("base", "times_s")

    def __init__(self) -> None:
        self.times_s = array("d")
        self.base = 0  # global index of times_s[0]

    def __len__(self) -> int:
        """Steps recorded so far (trimmed ones included): the next step's index."""
        return self.base + len(self.times_s)

    def append(self, end_s: float) -> int:
        """Add one step's end; returns its index."""
        self.times_s.append(end_s)
        return self.base + len(self.times_s) - 1

    def extend(self, ends_s: list[float]) -> int:
        """Add many steps' ends; returns the index of the first."""
        start = self.base + len(self.times_s)
        self.times_s.fromlist(ends_s)
        return start

    def trim(self, keep_from: int) -> None:
        """Forget the steps before `keep_from`: token times that read them become invalid."""
        drop = keep_from - self.base
        if drop > 0:
            del self.times_s[:drop]
            self.base = keep_from


class TokenTimes(Sequence[float]):
    """One request's token times: ranges of its replica's timeline, merged when adjacent."""

    __slots__ = ("_bounds", "_num_tokens", "_timeline")

    def __init__(self, timeline: StepTimeline) -> None:
        self._timeline = timeline
        self._bounds = array("q")  # start0, stop0, start1, stop1, ... (timeline indices)
        self._num_tokens = 0

    def __reduce__(self) -> tuple[Any, ...]:  # mypyc: native __init__ needs `timeline` on unpickle
        return (_rebuild_token_times, (self._timeline, self._bounds, self._num_tokens))

    def add(self, start: int, stop: int) -> None:
        """The request got a token at each step in [start, stop) of the timeline (again at
        the last step it got one: speculative decoding's several tokens in one step)."""
        bounds = self._bounds
        if bounds and bounds[-1] == start:
            bounds[-1] = stop
        else:
            assert not bounds or bounds[-1] <= start + 1, "token ranges must be added in order"
            assert start < stop <= len(self._timeline), f"bad token range [{start}, {stop})"
            bounds.append(start)
            bounds.append(stop)
        self._num_tokens += stop - start

    @property
    def num_ranges(self) -> int:
        return len(self._bounds) // 2

    @property
    def first_step(self) -> int | None:
        """Timeline index of the first token (None before it): what a trim must keep."""
        return self._bounds[0] if self._bounds else None

    def __len__(self) -> int:
        return self._num_tokens

    @overload
    def __getitem__(self, index: int) -> float: ...

    @overload
    def __getitem__(self, index: slice) -> list[float]: ...

    def __getitem__(self, index: int | slice) -> float | list[float]:
        if isinstance(index, slice):
            return self.tolist()[index]
        n = self._num_tokens
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("token index out of range")
        bounds, times, base = self._bounds, self._timeline.times_s, self._timeline.base
        if index == n - 1:  # the last token (finish time): O(1)
            return times[bounds[-1] - 1 - base]
        for k in range(0, len(bounds), 2):
            width = bounds[k + 1] - bounds[k]
            if index < width:
                return times[bounds[k] + index - base]
            index -= width
        raise AssertionError("token count and ranges disagree")

    def __iter__(self) -> Iterator[float]:
        bounds, times, base = self._bounds, self._timeline.times_s, self._timeline.base
        for k in range(0, len(bounds), 2):
            yield from times[bounds[k] - base:bounds[k + 1] - base]

    def tolist(self) -> list[float]:
        return list(self)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        bounds, times, base = self._bounds, self._timeline.times_s, self._timeline.base
        if len(bounds) == 2:  # one range (most requests): no list of parts, no concatenation
            out = np.frombuffer(times[bounds[0] - base:bounds[1] - base], dtype=np.float64)
            return out if dtype is None else out.astype(dtype, copy=False)
        parts = [np.frombuffer(times[bounds[k] - base:bounds[k + 1] - base], dtype=np.float64)
                 for k in range(0, len(bounds), 2)]
        out = np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence | array):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:  # mypyc: `__hash__ = None` is rejected; mutable, like a list
        raise TypeError("unhashable type: 'TokenTimes'")

    def __repr__(self) -> str:
        return f"TokenTimes({self.tolist()!r})"


def _rebuild_token_times(timeline: StepTimeline, bounds: array[int], num_tokens: int) -> TokenTimes:
    t = TokenTimes(timeline)
    t._bounds, t._num_tokens = bounds, num_tokens
    return t


def add_range(times: Iterable[Any], start: int, stop: int) -> None:
    """`t.add(start, stop)` for every `t` (a decode run's requests: the simulator's hottest
    loop, so `add` is inlined: a range that continues the last one, as after a mixed step, or
    a new one, as after a prefill-only step, which gives the running requests no token)."""
    num_tokens = stop - start
    pair = array("q", (start, stop))
    for t in times:
        if type(t) is not TokenTimes:
            t.add(start, stop)  # another kind (a moved request's spliced times)
            continue
        bounds = t._bounds
        if bounds and bounds[-1] == start:
            bounds[-1] = stop
        elif bounds and bounds[-1] > start:
            raise AssertionError("token ranges must be added in order")
        else:  # a new range: every running request after a prefill-only step
            bounds += pair  # (array += array: one copy, no per-item conversion)
        t._num_tokens += num_tokens
