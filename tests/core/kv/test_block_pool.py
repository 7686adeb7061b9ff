import random

import pytest

from shunter.core.kv.block_pool import BlockPool


def test_allocate_and_free_keep_counts():
    pool = BlockPool(8)
    got = pool.allocate(3)
    assert got == [0, 1, 2]
    assert pool.num_free_blocks == 5 and pool.num_used_blocks == 3
    pool.check_invariants()
    pool.free(reversed(got))
    assert pool.num_free_blocks == 8
    pool.check_invariants()


def test_hit_on_free_block_keeps_its_hash():
    pool = BlockPool(4)
    (b,) = pool.allocate(1)
    assert pool.cache(b, 111)
    pool.free([b])
    assert pool.lookup(111) == b  # free but still cached
    pool.touch([b])
    assert pool.ref_count(b) == 1 and pool.block_hash(b) == 111 and pool.lookup(111) == b
    pool.check_invariants()


def test_allocation_evicts_least_recently_freed_first():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    for blk, h in ((a, 1), (b, 2), (c, 3)):
        pool.cache(blk, h)
    pool.free([c, b, a])  # tail first: c is evicted first
    (first,) = pool.allocate(1)
    assert first == c and pool.lookup(3) is None and pool.lookup(1) == a
    pool.check_invariants()


def test_duplicate_hash_is_not_cached_twice():
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    assert pool.cache(a, 5)
    assert not pool.cache(b, 5)
    assert pool.block_hash(b) is None and pool.lookup(5) == a


def test_caching_off_never_caches():
    pool = BlockPool(2, enable_caching=False)
    (a,) = pool.allocate(1)
    assert not pool.cache(a, 1) and pool.lookup(1) is None


def test_double_free_is_an_invariant_violation():
    pool = BlockPool(2)
    (a,) = pool.allocate(1)
    pool.free([a])
    with pytest.raises(AssertionError):
        pool.free([a])


def test_invalid_size():
    with pytest.raises(ValueError):
        BlockPool(0)


def test_random_operations_keep_invariants():
    rng = random.Random(0)
    pool = BlockPool(32)
    held: list[int] = []
    for _ in range(2000):
        op = rng.random()
        if op < 0.4 and pool.num_free_blocks:
            n = rng.randint(1, pool.num_free_blocks)
            new = pool.allocate(n)
            for blk in new:
                if rng.random() < 0.5:
                    pool.cache(blk, rng.randint(0, 50))
            held.extend(new)
        elif op < 0.7 and held:
            k = rng.randint(1, len(held))
            rng.shuffle(held)
            pool.free(held[:k])
            held = held[k:]
        else:
            h = rng.randint(0, 50)
            blk = pool.lookup(h)
            if blk is not None:
                pool.touch([blk])
                held.append(blk)
                assert pool.block_hash(blk) == h
        pool.check_invariants()
        assert pool.num_used_blocks == len(set(held))


@pytest.mark.parametrize("caching", [False, True])
def test_fifo_free_queue_hands_out_what_the_lru_queue_does(caching):
    """The list-backed FIFO queue gives the very ids of the ordered one: without caching
    always; with caching until the first published hash turns it into that queue, and after."""
    rng = random.Random(1)
    lru = BlockPool(64, enable_caching=caching)
    fifo = BlockPool(64, enable_caching=caching, fifo_free=True)
    held: list[int] = []
    publish_from = 1500 if caching else 3000  # half the run with no hash at all
    num_hits, published = 0, False
    for step in range(3000):
        if caching and step >= publish_from and held and rng.random() < 0.2:
            block, h = rng.choice(held), rng.randrange(40)
            if lru.block_hash(block) is None:
                is_new = fifo.cache(block, h)
                assert is_new == lru.cache(block, h)
                published |= is_new
            hit = lru.lookup(rng.randrange(40))  # a hit takes a free block out of the middle
            if hit is not None:
                num_hits += 1
                lru.touch([hit])
                fifo.touch([hit])
                held.append(hit)
        elif rng.random() < 0.55 and lru.num_free_blocks:
            n = rng.randint(1, lru.num_free_blocks)
            got = lru.allocate(n)
            assert fifo.allocate(n) == got
            held.extend(got)
        elif held:
            rng.shuffle(held)
            k = rng.randint(1, len(held))
            lru.free(held[:k])
            fifo.free(held[:k])
            held = held[k:]
        fifo.check_invariants()
        assert fifo.num_free_blocks == lru.num_free_blocks
        assert (fifo._fifo is None) == published  # FIFO until the first published hash
    if caching:
        assert num_hits > 10 and fifo.cached == lru.cached


def test_fifo_free_queue_refuses_what_it_cannot_do():
    pool = BlockPool(8, enable_caching=False, fifo_free=True)
    [a] = pool.allocate(1)
    pool.free([a])
    with pytest.raises(AssertionError, match="double free"):
        pool.free([a])
    with pytest.raises(AssertionError, match="hands out its head only"):
        pool.take_free(3)


@pytest.mark.parametrize("seed", range(4))
def test_lru_queue_keeps_an_ordered_dicts_order(seed):
    """The list-with-stale-entries free queue hands out exactly what an OrderedDict LRU queue
    (move-to-end on free, removal from the middle on a hit) would, through compaction and
    rebuilds."""
    from collections import OrderedDict

    rng = random.Random(seed)
    n = 40
    pool = BlockPool(n)
    model: OrderedDict[int, None] = OrderedDict.fromkeys(range(n))
    ref = [0] * n
    for _ in range(20000):
        op = rng.random()
        if op < 0.4 and model:
            k = rng.randint(1, len(model))
            want = [model.popitem(last=False)[0] for _ in range(k)]
            assert pool.allocate(k) == want
            for b in want:
                ref[b] = 1
        elif op < 0.7:  # a cache hit takes a reference (from the middle if the block is free)
            b = rng.randrange(n)
            pool.touch([b])
            model.pop(b, None)
            ref[b] += 1
        else:
            used = [b for b in range(n) if ref[b]]
            if used:
                b = rng.choice(used)
                pool.free([b])
                ref[b] -= 1
                if not ref[b]:
                    model[b] = None
        assert pool.num_free_blocks == len(model)
    pool.check_invariants()
    assert pool.allocate(len(model)) == list(model)


def test_lru_queue_rebuilds_when_mostly_stale():
    """Hits and frees without allocations leave stale entries; the queue rebuilds itself and
    keeps the order (the block hit and freed again moves to the tail)."""
    pool = BlockPool(8)
    for i in range(3000):
        b = i % 3
        pool.touch([b])
        pool.free([b])
    pool.check_invariants()
    assert len(pool._lru._ids) < 2 * 8 + 1024 + 1  # rebuilt, not 3000 entries long
    assert pool.allocate(8) == [3, 4, 5, 6, 7, 0, 1, 2]
