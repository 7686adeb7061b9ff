"""Contiguous (FastSwitch block-group) allocation: a request's blocks form runs of consecutive ids."""

from tests.factories import make_request

from shunter.core.kv.manager import KVCacheManager


def runs(ids: list[int]) -> int:
    return 1 + sum(1 for a, b in zip(ids, ids[1:], strict=False) if b != a + 1)


def grow_interleaved(contiguous: bool) -> list[list[int]]:
    """Three requests decode in lockstep, one block each per step, after some churn."""
    kv = KVCacheManager(64, 4, enable_caching=False, contiguous=contiguous)
    churn = [make_request(f"c{i}", num_prompt_tokens=8) for i in range(6)]
    for r in churn:
        assert kv.allocate_slots(r, 8)
    for r in churn[::2]:
        kv.free(r)
    reqs = [make_request(f"r{i}", num_prompt_tokens=4) for i in range(3)]
    for _step in range(8):
        for r in reqs:
            assert kv.allocate_slots(r, 4)
            r.num_computed_tokens += 4
        kv.pool.check_invariants()
    return [r.block_ids for r in reqs]


def test_lru_allocation_scatters_lockstep_requests_and_contiguous_keeps_runs():
    scattered = grow_interleaved(contiguous=False)
    grouped = grow_interleaved(contiguous=True)
    assert all(runs(ids) >= 7 for ids in scattered)  # every block its own run
    assert all(runs(ids) <= 3 for ids in grouped)
    assert sorted(b for ids in grouped for b in ids) == sorted(set(b for ids in grouped for b in ids))


def test_taking_a_free_cached_block_evicts_its_hash():
    kv = KVCacheManager(8, 4, contiguous=True)
    assert kv.pool.cache(kv.pool.allocate(1)[0], 1234)  # block 0 holds hash 1234
    kv.pool.free([0])
    assert kv.pool.take_free(0) and kv.pool.lookup(1234) is None
    assert not kv.pool.take_free(0) and not kv.pool.take_free(8)
    kv.pool.check_invariants()
