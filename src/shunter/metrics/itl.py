"""Inter-token latency: the gaps between consecutive tokens of completed requests, pooled.

A run's pooled gaps are many (20M for 100,000 requests of 200 tokens) but take few distinct
values: a simulated decode step gives every request in its batch the same gap. `GapCounts`
keeps them as their distinct values and counts, merged chunk by chunk, which a streamed run
(`sim.stream.ColumnSink`) builds from each chunk of finished records and a whole run from all
of them at once: the same arrays either way, so the same statistics to the bit
(`LatencyStats.of_counts`).
"""

from __future__ import annotations

import numpy as np

from shunter.metrics.columns import RecordColumns
from shunter.metrics.stats import LatencyStats

__all__ = ["GapCounts", "itl_gaps"]

MERGE_BATCH = 1 << 18


def itl_gaps(cols: RecordColumns) -> np.ndarray:
    """Gaps between consecutive tokens of the same completed request, pooled."""
    if cols.token_times_s.size < 2:
        return np.empty(0)
    has_gap_before = np.repeat(cols.is_completed, cols.num_output_tokens)
    has_gap_before[cols.token_offsets[:-1][cols.num_output_tokens > 0]] = False
    return np.diff(cols.token_times_s)[has_gap_before[1:]]


def _distinct(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values (ascending) and the counts summed for each. (What `np.unique`
    with `return_inverse` and a `bincount` give, in about half the time: an unstable sort is
    enough here, and `np.unique` sorts stably.)"""
    if not values.size:
        return values, counts
    order = np.argsort(values)
    values, counts = values[order], counts[order]
    del order
    starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    return values[starts], np.add.reduceat(counts, starts)


class GapCounts:
    """A multiset of gaps: distinct values (ascending) and how often each occurs. Chunks are
    counted as they come and merged into what is held in batches of `MERGE_BATCH` values (a
    batch is sorted, then inserted: the values held are copied once a batch, never sorted
    again, and a merge's peak memory is about the values held plus a batch)."""

    __slots__ = ("_counts", "_pending", "_pending_size", "_values")

    def __init__(self) -> None:
        self._values = np.empty(0, dtype=np.float64)
        self._counts = np.empty(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    @classmethod
    def of(cls, gaps: np.ndarray) -> GapCounts:
        out = cls()
        out.add(gaps)
        return out

    @property
    def values(self) -> np.ndarray:
        self._merge()
        return self._values

    @property
    def counts(self) -> np.ndarray:
        self._merge()
        return self._counts

    def add(self, gaps: np.ndarray) -> None:
        """Count more gaps in."""
        if gaps.size:
            values, counts = np.unique(gaps, return_counts=True)
            self._push(values, counts.astype(np.int64))

    def add_counts(self, gaps: np.ndarray, counts: np.ndarray) -> None:
        """Count in `gaps[i]` `counts[i]` times each (values in any order, repeats allowed)."""
        if gaps.size:
            self._push(gaps, counts.astype(np.int64, copy=False))

    def merge(self, other: GapCounts) -> None:
        """Count another multiset in."""
        if other.values.size:
            self._push(other.values, other.counts)

    def _push(self, values: np.ndarray, counts: np.ndarray) -> None:
        self._pending.append((values, counts))
        self._pending_size += values.size
        if self._pending_size >= MERGE_BATCH:
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        gaps = np.concatenate([v for v, _ in self._pending])
        weights = np.concatenate([c for _, c in self._pending])
        self._pending, self._pending_size = [], 0
        new, new_counts = _distinct(gaps, weights)
        del gaps, weights
        if not self._values.size:
            self._values, self._counts = new, new_counts
            return
        # both sorted and distinct: add the counts of values already held, insert the others
        # (a merge in place of one sort of everything: peak memory about twice the values held,
        # not six times)
        at = np.searchsorted(self._values, new)
        held = at < self._values.size
        held[held] = self._values[at[held]] == new[held]
        self._counts[at[held]] += new_counts[held]
        fresh = ~held
        if fresh.any():
            self._values = np.insert(self._values, at[fresh], new[fresh])
            self._counts = np.insert(self._counts, at[fresh], new_counts[fresh])

    def stats(self) -> LatencyStats:
        return LatencyStats.of_counts(self.values, self.counts)
