"""KV-cache events: the pool and manager record every hash they publish or drop, so that a
mirror built from the events alone always equals the prefix cache."""

import random

from tests.factories import FakeExecutor, make_scheduler, make_spec

from shunter.core.clock import ManualClock
from shunter.core.kv.block_pool import BlockPool
from shunter.core.kv.events import AllBlocksCleared, BlockRemoved, BlockStored, KvEventLog
from shunter.core.request import Request

BS = 4


def test_no_log_records_nothing_and_changes_nothing():
    pool = BlockPool(2)
    assert pool.event_log is None
    (a,) = pool.allocate(1)
    pool.cache(a, 1)
    pool.free([a])
    pool.allocate(2)
    pool.reset_cache()
    pool.check_invariants()


def test_pool_records_evictions_and_resets_only():
    pool = BlockPool(3)
    pool.event_log = log = KvEventLog()
    a, b, c = pool.allocate(3)
    pool.cache(a, 10)
    pool.cache(b, 11)
    assert not pool.cache(c, 10)  # a duplicate: not cached, nothing dropped later
    pool.free([c, b, a])
    assert log.take() == []  # publishing is recorded by the manager, freeing is no event
    assert pool.allocate(2) == [c, b]
    assert log.take() == [BlockRemoved((11,))]
    assert pool.take_free(a)
    assert log.take() == [BlockRemoved((10,))]
    pool.reset_cache()
    assert log.take() == [AllBlocksCleared()]
    assert log.take() == []


def mirror(events, held):
    """Apply events to a set of hashes, as a subscriber's index would."""
    for event in events:
        match event:
            case BlockStored():
                assert len(event.token_ids) == len(event.block_hashes) * event.block_size
                assert event.parent_block_hash is None or event.parent_block_hash in held
                held.update(event.block_hashes)
            case BlockRemoved():
                assert held >= set(event.block_hashes)
                held.difference_update(event.block_hashes)
            case AllBlocksCleared():
                held.clear()


def test_manager_records_runs_with_their_tokens_and_parent():
    scheduler = make_scheduler(num_blocks=16, block_size=BS)
    log = scheduler.kv.pool.event_log = KvEventLog()
    tokens = list(range(100, 114))  # three full blocks and two tokens
    request = Request.from_spec(make_spec("a", num_prompt_tokens=len(tokens),
                                          prompt_token_ids=tuple(tokens)), block_size=BS)
    scheduler.add_request(request)
    out = scheduler.schedule()
    scheduler.update(out, FakeExecutor().execute(out))
    [stored] = log.take()
    assert stored == BlockStored(block_hashes=tuple(request.block_hashes[:3]),
                                 parent_block_hash=None, token_ids=tuple(tokens[:12]),
                                 block_size=BS)


def test_events_mirror_the_cache_through_sharing_eviction_and_preemption():
    rng = random.Random(3)
    clock = ManualClock()
    scheduler = make_scheduler(num_blocks=24, block_size=BS, clock=clock)
    pool = scheduler.kv.pool
    log = pool.event_log = KvEventLog()
    executor = FakeExecutor()
    stems = [[rng.randrange(1000) for _ in range(rng.choice([4, 9, 16]))] for _ in range(4)]
    held: set[int] = set()
    num_removed = 0
    for i in range(40):
        prompt = rng.choice(stems) + [rng.randrange(1000) for _ in range(rng.randrange(1, 12))]
        executor.lengths[f"r{i}"] = rng.randrange(1, 10)
        scheduler.add_request(Request.from_spec(make_spec(
            f"r{i}", num_prompt_tokens=len(prompt), num_output_tokens=10,
            prompt_token_ids=tuple(prompt)), block_size=BS))
        for _ in range(rng.randrange(1, 4)):
            if not scheduler.has_work:
                break
            out = scheduler.schedule()
            scheduler.update(out, executor.execute(out))
            events = log.take()
            num_removed += sum(isinstance(e, BlockRemoved) for e in events)
            mirror(events, held)
            assert held == set(pool.cached)
            pool.check_invariants()
    assert num_removed > 0
    pool.reset_cache()
    mirror(log.take(), held)
    assert held == set() == set(pool.cached)
