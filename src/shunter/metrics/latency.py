"""Per-request latencies and the run's span over columns of requests: the one definition of each
(see `shunter.metrics.summary`'s docstring), used by `summarize` over records and by the
simulator's streamed runs over spilled columns (`shunter.sim.stream`), a chunk at a time.

Every argument is an array with one entry per request (NaN where a request has no such time);
a request without a latency gets NaN, which `LatencyStats.of` drops.
"""

from __future__ import annotations

import numpy as np

__all__ = ["e2e_s", "queue_s", "run_duration_s", "tpot_s", "ttft_s"]


def ttft_s(arrival_s: np.ndarray, first_token_s: np.ndarray) -> np.ndarray:
    """Time to first token: first token - arrival."""
    return first_token_s - arrival_s


def e2e_s(arrival_s: np.ndarray, finish_s: np.ndarray) -> np.ndarray:
    """End to end: finish - arrival."""
    return finish_s - arrival_s


def queue_s(arrival_s: np.ndarray, first_scheduled_s: np.ndarray) -> np.ndarray:
    """Queueing delay: first scheduled - arrival."""
    return first_scheduled_s - arrival_s


def tpot_s(first_token_s: np.ndarray, last_token_s: np.ndarray,
           num_output_tokens: np.ndarray) -> np.ndarray:
    """Time per output token, vLLM's: (last token - first token) / (output tokens - 1), NaN
    for fewer than 2 output tokens."""
    num_gaps = np.where(num_output_tokens >= 2, num_output_tokens - 1, np.nan)
    return (last_token_s - first_token_s) / num_gaps


def run_duration_s(arrival_s: np.ndarray, *ends_s: np.ndarray) -> float:
    """The run's span: its last end (the latest of `ends_s`, e.g. finish and last token times;
    NaN ignored) - its first arrival; 0 with no arrival or no end. Reads each column in place
    (a memory map stays one)."""
    last = -np.inf
    for ends in ends_s:
        if ends.size:
            last = max(last, float(np.fmax.reduce(ends)))  # (fmax skips NaN; all NaN gives NaN)
    if arrival_s.size == 0 or last == -np.inf:
        return 0.0
    return max(0.0, last - float(arrival_s.min()))
