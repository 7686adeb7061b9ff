"""Token times as index ranges over a replica's step timeline, instead of one float per token.

Every token a replica emits is emitted at the end of one of its steps, and a decoding request
gets a token at every step until something interrupts it (a prefill-first step, a preemption,
its end). So a replica keeps one `array('d')` of step end times (`StepTimeline`), and each
request's token times are a few `[start, stop)` ranges of that array (`TokenTimes`): about 16
bytes per interruption instead of 8 bytes per token (a list of floats costs ~32 per token).

`TokenTimes` reads like the list it replaces (len, indexing, iteration, equality, numpy
conversion), so metrics code is unchanged. The values are the very floats step-by-step
recording stores; nothing is recomputed.

`GapTally` counts finished requests' inter-token gaps on the same timeline: a decode step gives
every request in its batch the same gap, so the gaps of a run (20M for 100,000 requests) are a
few values per step, each with how many requests' ranges span it.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np

__all__ = ["GapTally", "StepTimeline", "TokenTimes", "add_range"]


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
    """One request's token times: ranges of its replica's timeline, merged when adjacent.

    The last range is held in two native ints (`_last`, `_stop`; -1 before the first token),
    the earlier ones in an `array('q')`: a step's token continues the last range, so `add`
    writes one int instead of an array item (run for every request of every step)."""

    __slots__ = ("_closed", "_last", "_num_tokens", "_stop", "_timeline")

    def __init__(self, timeline: StepTimeline) -> None:
        self._timeline = timeline
        self._closed = array("q")  # start0, stop0, start1, stop1, ... before the last range
        self._last = -1  # the last range [_last, _stop) (timeline indices)
        self._stop = -1
        self._num_tokens = 0

    def __reduce__(self) -> tuple[Any, ...]:  # mypyc: native __init__ needs `timeline` on unpickle
        return (_rebuild_token_times, (self._timeline, self.bounds, self._num_tokens))

    def add(self, start: int, stop: int) -> None:
        """The request got a token at each step in [start, stop) of the timeline (again at
        the last step it got one: speculative decoding's several tokens in one step)."""
        if self._stop == start:
            self._stop = stop
        else:
            assert self._stop <= start + 1, "token ranges must be added in order"
            assert start < stop <= len(self._timeline), f"bad token range [{start}, {stop})"
            self._open(start, stop)
        self._num_tokens += stop - start

    def _open(self, start: int, stop: int) -> None:
        """Begin a new last range, closing the one before."""
        if self._stop >= 0:
            self._closed.append(self._last)
            self._closed.append(self._stop)
        self._last, self._stop = start, stop

    @property
    def bounds(self) -> array[int]:
        """start0, stop0, start1, stop1, ... of every range (a copy)."""
        out = array("q", self._closed)
        if self._stop >= 0:
            out.append(self._last)
            out.append(self._stop)
        return out

    @property
    def timeline(self) -> StepTimeline:
        return self._timeline

    @property
    def num_ranges(self) -> int:
        return len(self._closed) // 2 + (self._stop >= 0)

    @property
    def first_step(self) -> int | None:
        """Timeline index of the first token (None before it): what a trim must keep."""
        if self._closed:
            return self._closed[0]
        return self._last if self._stop >= 0 else None

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
        times, base = self._timeline.times_s, self._timeline.base
        if index == n - 1:  # the last token (finish time): O(1)
            return times[self._stop - 1 - base]
        bounds = self.bounds
        for k in range(0, len(bounds), 2):
            width = bounds[k + 1] - bounds[k]
            if index < width:
                return times[bounds[k] + index - base]
            index -= width
        raise AssertionError("token count and ranges disagree")

    def __iter__(self) -> Iterator[float]:
        bounds, times, base = self.bounds, self._timeline.times_s, self._timeline.base
        for k in range(0, len(bounds), 2):
            yield from times[bounds[k] - base:bounds[k + 1] - base]

    def tolist(self) -> list[float]:
        return list(self)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        times, base = self._timeline.times_s, self._timeline.base
        if not self._closed and self._stop >= 0:  # one range (most requests): no list of parts
            out = np.frombuffer(times[self._last - base:self._stop - base], dtype=np.float64)
            return out if dtype is None else out.astype(dtype, copy=False)
        bounds = self.bounds
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
    if bounds:
        t._closed = bounds[:-2]
        t._last, t._stop = bounds[-2], bounds[-1]
    t._num_tokens = num_tokens
    return t


def add_range(times: list[TokenTimes], start: int, stop: int) -> None:
    """`t.add(start, stop)` for every `t` (a decode run's requests: the simulator's hottest
    loop, so `add` is inlined: a range that continues the last one, as after a mixed step, or
    a new one, as after a prefill-only step, which gives the running requests no token)."""
    num_tokens = stop - start
    for t in times:
        if t._stop == start:
            t._stop = stop
        elif t._stop > start:
            raise AssertionError("token ranges must be added in order")
        else:  # a new range: every running request after a prefill-only step
            t._open(start, stop)
        t._num_tokens += num_tokens


SETTLE_STEPS = 1 << 15  # a tally settles its complete steps in batches at least this long


class GapTally:
    """The inter-token gaps of finished requests on one timeline, counted per step.

    A request's token range [s, e) holds the gaps t[i + 1] - t[i] for s <= i < e - 1: `add`
    marks them in a difference array over the steps (two writes a range, whatever its length),
    and a gap between two of its ranges (after a prefill-only step or a speculative step) is
    kept as it is. Steps before the timeline's base are complete (`trim` forgot them because no
    live request reads them, so every request that spans them has been added); they are
    settled into (gap, count) pairs, per step t[i + 1] - t[i] and how many ranges span it: the
    same floats as `np.diff` of each request's token times, counted. The tally holds its own
    copy of the step times it may still need, so a trim never takes them from it.
    """

    __slots__ = ("_base", "_cover", "_times", "settle_steps", "settled", "timeline")

    def __init__(self, timeline: StepTimeline, settle_steps: int = SETTLE_STEPS) -> None:
        self.timeline = timeline
        self.settle_steps = settle_steps
        self._base = timeline.base  # global step index of _times[0] and _cover[0]
        self._times = array("d")
        self._cover = array("q")
        # (gaps, counts) pairs ready to be counted in; cross-range gaps with a count of 1
        self.settled: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, times: TokenTimes) -> None:
        """Count a finished request's gaps (read now: its steps may be trimmed after)."""
        assert times._timeline is self.timeline, "a tally counts one timeline's requests"
        if times._stop < 0:
            return
        if self.timeline.base - self._base >= self.settle_steps:
            self._settle(self.timeline.base - self._base)
        self._copy_through(times._stop)
        closed = times._closed
        for k in range(0, len(closed), 2):
            self._cover_range(closed[k], closed[k + 1])
        self._cover_range(times._last, times._stop)
        if closed:  # the gaps between its ranges, one each
            own, base, bounds = self._times, self._base, times.bounds
            cross = array("d", [own[bounds[k] - base] - own[bounds[k - 1] - 1 - base]
                                for k in range(2, len(bounds), 2)])
            self.settled.append((np.frombuffer(cross, dtype=np.float64),
                                 np.ones(len(cross), dtype=np.int64)))

    def _cover_range(self, start: int, stop: int) -> None:
        """Mark the gaps of one token range [start, stop) in the difference array."""
        if stop - start >= 2:
            self._cover[start - self._base] += 1
            self._cover[stop - 1 - self._base] -= 1

    def settle_all(self) -> None:
        """Settle every step held: call once every request that spans them has been added."""
        self._settle(len(self._times))

    def _settle(self, num_steps: int) -> None:
        """Count the first `num_steps` steps held (complete ones) into `settled`; forget them."""
        held = len(self._times)
        m = min(num_steps, held)
        if m <= 0:
            return
        counts = np.cumsum(np.frombuffer(self._cover[:m], dtype=np.int64))
        times = np.frombuffer(self._times[:min(m + 1, held)], dtype=np.float64)
        gaps = times[1:] - times[:-1]  # a counted step i always holds step i + 1's time
        spanned = counts[:gaps.size] > 0
        if spanned.any():
            self.settled.append((gaps[spanned], counts[:gaps.size][spanned]))
        carry = int(counts[-1])  # ranges that go on past the cut
        del self._times[:m]
        del self._cover[:m]
        if self._cover:
            self._cover[0] += carry
        else:
            assert carry == 0, "a range outlives the steps held"
        self._base += m

    def _copy_through(self, stop: int) -> None:
        """Hold the timeline's step times up to `stop` (exclusive)."""
        timeline = self.timeline
        copied = self._base + len(self._times)
        if copied < timeline.base:
            # steps [copied, base) were trimmed unread: nothing spans them and every step held
            # is complete; settle them and hold from the timeline's base on
            self.settle_all()
            self._base = copied = timeline.base
        if stop > copied:
            self._times.extend(timeline.times_s[copied - timeline.base:stop - timeline.base])
            self._cover.frombytes(bytes(8 * (stop - copied)))  # zeros
