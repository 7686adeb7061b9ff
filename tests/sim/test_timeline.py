"""TokenTimes must read exactly like the list of floats it replaces."""

from __future__ import annotations

import random

import numpy as np
import pytest

from shunter.metrics.columns import to_columns
from shunter.metrics.record import RequestRecord
from shunter.sim.timeline import StepTimeline, TokenTimes, add_range


def build(seed: int) -> tuple[TokenTimes, list[float]]:
    """Random step ends, and a request that gets tokens at random runs of steps."""
    rng = random.Random(seed)
    timeline = StepTimeline()
    times = TokenTimes(timeline)
    expected: list[float] = []
    t = 0.0
    for _ in range(rng.randint(1, 30)):
        ends = []
        for _ in range(rng.randint(1, 6)):
            t += rng.random()
            ends.append(t)
        start = timeline.extend(ends) if len(ends) > 1 else timeline.append(ends[0])
        if rng.random() < 0.7:  # the request was in these steps
            skip = rng.randint(0, len(ends) - 1)
            times.add(start + skip, start + len(ends))
            expected += ends[skip:]
    return times, expected


@pytest.mark.parametrize("seed", range(20))
def test_reads_like_the_list(seed):
    times, expected = build(seed)
    assert len(times) == len(expected)
    assert list(times) == expected == times.tolist()
    assert times == expected and (times != expected + [1.0])
    assert [times[i] for i in range(-len(expected), len(expected))] == expected + expected
    assert times[1:-1] == expected[1:-1]
    assert np.array_equal(np.asarray(times, dtype=np.float64), np.array(expected))
    assert bool(times) == bool(expected)
    with pytest.raises(IndexError):
        times[len(expected)]


def test_adjacent_ranges_merge():
    timeline = StepTimeline()
    times = TokenTimes(timeline)
    first = timeline.append(1.0)
    times.add(first, first + 1)
    start = timeline.extend([2.0, 3.0])
    times.add(start, start + 2)
    assert times.num_ranges == 1 and list(times) == [1.0, 2.0, 3.0]
    timeline.append(4.0)  # a step the request sat out (a prefill-first step)
    start = timeline.extend([5.0, 6.0])
    times.add(start, start + 2)
    assert times.num_ranges == 2 and list(times) == [1.0, 2.0, 3.0, 5.0, 6.0]


def test_ranges_must_exist_and_come_in_order():
    timeline = StepTimeline()
    times = TokenTimes(timeline)
    timeline.extend([1.0, 2.0, 3.0])
    with pytest.raises(AssertionError):
        times.add(2, 4)  # past the timeline (checked when a range starts)
    times.add(2, 3)
    with pytest.raises(AssertionError):
        times.add(0, 1)  # before the last range


@pytest.mark.parametrize("seed", range(10))
def test_add_range_is_add_for_each(seed):
    """The inlined bulk path (continuations and new ranges) equals one `add` per request."""
    rng = random.Random(seed)
    timeline = StepTimeline()
    bulk = [TokenTimes(timeline) for _ in range(6)]
    one_by_one = [TokenTimes(timeline) for _ in range(6)]
    for _ in range(40):
        start = timeline.extend([float(len(timeline) + k) for k in range(rng.randint(1, 4))])
        if rng.random() < 0.3:
            continue  # a step everyone sat out: the next range is a new one
        members = [i for i in range(6) if rng.random() < 0.8]
        add_range([bulk[i] for i in members], start, len(timeline))
        for i in members:
            one_by_one[i].add(start, len(timeline))
    for a, b in zip(bulk, one_by_one, strict=True):
        assert a.num_ranges == b.num_ranges and list(a) == list(b) and len(a) == len(b)
    with pytest.raises(AssertionError):
        add_range(bulk, 0, 1)  # before the last range


def test_metrics_columns_accept_token_times():
    records = []
    expected = []
    for seed in range(5):
        times, values = build(seed)
        records.append(RequestRecord(request_id=str(seed), arrival_s=0.0, num_prompt_tokens=1,
                                     token_times_s=times))  # type: ignore[arg-type]
        expected += values
    cols = to_columns(records)
    assert np.array_equal(cols.token_times_s, np.array(expected))


def test_trimmed_steps_keep_live_token_times():
    timeline = StepTimeline()
    old, live = TokenTimes(timeline), TokenTimes(timeline)
    start = timeline.extend([1.0, 2.0, 3.0, 4.0])
    old.add(start, start + 2)
    live.add(start + 2, start + 4)
    timeline.trim(live.first_step)
    assert timeline.base == 2 and len(timeline) == 4
    later = timeline.append(5.0)
    assert later == 4
    live.add(later, later + 1)
    assert list(live) == [3.0, 4.0, 5.0] and live[0] == 3.0 and live[-1] == 5.0
    assert np.array_equal(np.asarray(live), [3.0, 4.0, 5.0])
