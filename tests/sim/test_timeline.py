"""TokenTimes must read exactly like the list of floats it replaces; GapTally must count their gaps."""

from __future__ import annotations

import random

import numpy as np
import pytest

from shunter.metrics.columns import to_columns
from shunter.metrics.itl import GapCounts
from shunter.metrics.record import RequestRecord
from shunter.sim.timeline import GapTally, StepTimeline, TokenTimes, add_range


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


@pytest.mark.parametrize("settle_steps", [1, 7, 1 << 15])
@pytest.mark.parametrize("seed", range(6))
def test_a_gap_tally_counts_the_gaps_of_each_requests_token_times(seed, settle_steps):
    """Requests on one timeline, some in several ranges, some with a speculative step's
    repeated token, finishing in random order while the timeline is trimmed as a streamed
    run trims it: the tally's (gap, count) pairs are exactly np.diff of every request's token
    times, counted."""
    rng = random.Random(seed)
    timeline = StepTimeline()
    tally = GapTally(timeline, settle_steps=settle_steps)
    live: list[TokenTimes] = []
    expected: list[float] = []
    for _ in range(400):
        step = timeline.append(len(timeline) * 0.25 + rng.random() * 0.2)  # distinct and repeated gaps
        if rng.random() < 0.3:
            live.append(TokenTimes(timeline))
        for times in live:
            last = times.bounds[-1] if times.num_ranges else None
            if rng.random() < 0.15:
                continue  # a prefill-only step: this one gets no token
            if last == step and rng.random() < 0.5:
                times.add(step - 1, step + 1)  # a repeated token in the same step
            else:
                times.add(step, step + 1)
        for times in [t for t in live if rng.random() < 0.05]:
            live.remove(times)
            expected.extend(np.diff(np.asarray(times)).tolist())
            tally.add(times)
        if rng.random() < 0.1:  # trim as `SimReplica.trim_timeline` does
            firsts = [t.first_step for t in live if t.first_step is not None]
            timeline.trim(min(firsts, default=len(timeline)))
    for times in live:
        expected.extend(np.diff(np.asarray(times)).tolist())
        tally.add(times)
    tally.settle_all()
    counted = GapCounts()
    for gaps, counts in tally.settled:
        counted.add_counts(gaps, counts)
    truth = GapCounts.of(np.array(expected))
    assert truth.counts.sum() > 1000
    np.testing.assert_array_equal(counted.values, truth.values)
    np.testing.assert_array_equal(counted.counts, truth.counts)
