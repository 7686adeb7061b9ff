"""The one definition of each per-request latency, over columns (summaries and streamed runs)."""

import math

import numpy as np

from shunter.metrics import latency

NAN = math.nan


def test_latencies_are_differences_from_arrival_and_tpot_needs_two_tokens():
    arrival = np.array([0.0, 1.0, 2.0])
    first, last = np.array([0.5, 1.5, NAN]), np.array([2.5, 1.5, NAN])
    assert latency.ttft_s(arrival, first)[:2].tolist() == [0.5, 0.5]
    assert latency.e2e_s(arrival, np.array([3.0, 2.0, 4.0])).tolist() == [3.0, 1.0, 2.0]
    assert latency.queue_s(arrival, np.array([0.25, 1.0, NAN]))[:2].tolist() == [0.25, 0.0]
    tpot = latency.tpot_s(first, last, np.array([5, 1, 0]))
    assert tpot[0] == 0.5 and np.isnan(tpot[1:]).all()  # (2.5 - 0.5) / 4; none for 1 or 0 tokens


def test_run_duration_is_the_last_end_less_the_first_arrival_ignoring_missing_ends():
    arrival = np.array([1.0, 3.0])
    assert latency.run_duration_s(arrival, np.array([NAN, 7.0]), np.array([9.0, NAN])) == 8.0
    assert latency.run_duration_s(arrival, np.array([NAN, NAN])) == 0.0  # no end at all
    assert latency.run_duration_s(np.empty(0), np.empty(0)) == 0.0
