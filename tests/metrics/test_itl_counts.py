"""`GapCounts`: gaps counted chunk by chunk, merged in any order, equal the one-shot count."""

from __future__ import annotations

import numpy as np
import pytest

from shunter.metrics.itl import GapCounts


@pytest.mark.parametrize("seed", range(4))
def test_counts_merged_chunk_by_chunk_equal_counting_everything_at_once(seed):
    rng = np.random.default_rng(seed)
    pool = np.round(rng.random(300), 3)  # values repeat within and across chunks
    chunks = [rng.choice(pool, size=int(rng.integers(1, 500))) for _ in range(40)]
    counted, other = GapCounts(), GapCounts()
    for i, chunk in enumerate(chunks):
        if i % 3 == 0:
            values, counts = np.unique(chunk, return_counts=True)
            counted.add_counts(values[::-1].copy(), counts[::-1].copy())  # any order
        elif i % 3 == 1:
            counted.add(chunk)
        else:
            other.add(chunk)
        if i % 4 == 0:
            assert counted.values.size  # merges into what is held, not only into nothing
    counted.merge(other)
    truth = GapCounts.of(np.concatenate(chunks))
    np.testing.assert_array_equal(counted.values, truth.values)
    np.testing.assert_array_equal(counted.counts, truth.counts)
    assert counted.counts.dtype == np.int64
    assert counted.stats() == truth.stats()
