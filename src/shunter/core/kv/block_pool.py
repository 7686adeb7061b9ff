"""The KV block pool: reference counts, a prefix cache, and an LRU queue of free blocks.

Invariants (checked by `check_invariants`, and by the tests after every operation):
- every block is either free (ref count 0, in the free queue) or used (ref count > 0, not in it);
- the cache maps a hash only to a block that carries that hash;
- a free block may keep its hash: it stays a cache hit until it is handed out again, and a hit
  on a free block takes it out of the free queue *without* losing its hash (nano-vllm's bug).

The free queue is ordered for eviction: its head is handed out first. Callers free a request's
blocks tail-first, so the ends of long prompts are evicted before their shared beginnings.

The queue is a list with a moving head (`_LruQueue`): a freed block is appended, the head is
handed out, and a block taken from the middle (a cache hit on a free block, a contiguous
allocation) leaves its entry behind, stale, skipped when it reaches the head. That is the
order an OrderedDict keeps, at a list operation per block instead of a dict operation and a
tuple (with the prefix cache on, every prompt block goes through it). Without prefix caching
(and without contiguous allocation), no block ever leaves from the middle, so `fifo_free=True`
hands blocks out and takes them back by slices (the simulator's hot path on long decodes).
With caching on, `fifo_free=True` keeps those slices until the first hash is published: till
then no block can be a cache hit, so nothing leaves from the middle either; the first `cache`
turns the queue, in its order, into the LRU queue (a trace of lengths publishes no hash at all
unless a request is preempted or moved: its blocks are private, `KVCacheManager`).

`event_log` (None by default): when set, every hash dropped from the cache (an eviction) and
`reset_cache` are recorded there as KV-cache events (`events.py`); the manager records the
hashes it publishes.
"""

from __future__ import annotations

from collections.abc import Iterable

from shunter.core.kv.events import KvEventLog

__all__ = ["BlockPool"]


class BlockPool:
    """Fixed set of `num_blocks` KV blocks, ids 0..num_blocks-1."""

    __slots__ = ("_fifo", "_hash_of", "_lru", "_ref", "cached", "enable_caching", "event_log",
                 "num_blocks")

    def __init__(self, num_blocks: int, *, enable_caching: bool = True,
                 fifo_free: bool = False) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self._ref = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        self._fifo = _FifoQueue(num_blocks) if fifo_free else None
        self._lru = _LruQueue(0 if fifo_free else num_blocks)
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.event_log: KvEventLog | None = None  # records evictions and resets when set

    @property
    def num_free_blocks(self) -> int:
        return self._lru.num_free if self._fifo is None else len(self._fifo)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    def ref_count(self, block_id: int) -> int:
        return self._ref[block_id]

    def block_hash(self, block_id: int) -> int | None:
        return self._hash_of[block_id]

    def lookup(self, block_hash: int) -> int | None:
        """The block holding this hash's KV, or None on a miss."""
        return self.cached.get(block_hash)

    def num_free_among(self, block_ids: Iterable[int]) -> int:
        """How many of these (cache-hit) blocks are currently free, i.e. would leave the queue."""
        ref = self._ref
        return sum(1 for b in block_ids if ref[b] == 0)

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_free_blocks

    def allocate(self, num_blocks: int) -> list[int]:
        """Hand out `num_blocks` fresh blocks (evicting their cached hashes); caller checked fit."""
        assert num_blocks <= self.num_free_blocks, f"allocate {num_blocks} > free {self.num_free_blocks}"
        ref = self._ref
        if self._fifo is not None:  # no hashes, no middle removals: slices in queue order
            out = self._fifo.take(num_blocks)
            for block_id in out:
                ref[block_id] = 1
            return out
        hash_of, cached = self._hash_of, self.cached
        out = self._lru.take(num_blocks)  # the LRU head, in order
        if not self.enable_caching:  # no block ever carries a hash
            for block_id in out:
                ref[block_id] = 1
            return out
        removed: list[int] | None = None if self.event_log is None else []
        for block_id in out:
            old = hash_of[block_id]
            if old is not None:
                if cached.get(old) == block_id:
                    del cached[old]
                    if removed is not None:
                        removed.append(old)
                hash_of[block_id] = None
            ref[block_id] = 1
        if removed and self.event_log is not None:
            self.event_log.removed(tuple(removed))
        return out

    def roomiest_free_block(self) -> int | None:
        """Where a new run of ids has the most room to grow: the start of the longest stretch
        of free ids if nothing precedes it, else its middle (the left half stays for the run
        that ends before it). O(num_blocks); None if nothing is free."""
        best_start = best_len = 0
        start: int | None = None
        ref = self._ref
        for b in range(self.num_blocks + 1):
            if b < self.num_blocks and ref[b] == 0:
                if start is None:
                    start = b
                continue
            if start is not None and b - start > best_len:
                best_start, best_len = start, b - start
            start = None
        if not best_len:
            return None
        return best_start if best_start == 0 else best_start + best_len // 2

    def take_free(self, block_id: int) -> bool:
        """Hand out this particular block if it is free (evicting its cached hash), out of LRU
        order: contiguous allocation extends a request's run of ids with it."""
        if not 0 <= block_id < self.num_blocks or self._ref[block_id]:
            return False
        assert self._fifo is None or self.enable_caching, "a FIFO free queue hands out its head only"
        self._to_lru()
        self._lru.remove(block_id)
        old = self._hash_of[block_id]
        if old is not None:
            if self.cached.get(old) == block_id:
                del self.cached[old]
                if self.event_log is not None:
                    self.event_log.removed((old,))
            self._hash_of[block_id] = None
        self._ref[block_id] = 1
        return True

    def touch(self, block_ids: Iterable[int]) -> None:
        """Take a reference on cache-hit blocks; a free one leaves the queue but keeps its hash."""
        ref = self._ref
        for b in block_ids:
            if ref[b] == 0:
                assert self._fifo is None, "a FIFO free queue hands out its head only"
                self._lru.remove(b)
            ref[b] += 1

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop one reference on each block, in the given order (callers pass tail-first)."""
        ref = self._ref
        if self._fifo is not None:  # every used block has one reference (no cache hits)
            ids = list(block_ids)
            for b in ids:
                assert ref[b] == 1, f"double free of block {b}"
                ref[b] = 0
            self._fifo.extend(ids)
            return
        lru = self._lru
        for b in block_ids:
            count = ref[b] - 1
            assert count >= 0, f"double free of block {b}"
            ref[b] = count
            if not count:
                lru.push(b)

    def cache(self, block_id: int, block_hash: int) -> bool:
        """Publish a full block's hash; False if caching is off or another block has it already."""
        if not self.enable_caching or block_hash in self.cached:
            return False
        self._to_lru()
        assert self._hash_of[block_id] is None, f"block {block_id} already carries a hash"
        self._hash_of[block_id] = block_hash
        self.cached[block_hash] = block_id
        return True

    def _to_lru(self) -> None:
        """Leave the FIFO queue (caching on, no hash published yet) for the LRU queue, in the
        same order: from now on a cache hit may take a free block out of the middle."""
        if self._fifo is not None:
            self._lru = _LruQueue.of(self.num_blocks, self._fifo.ids())
            self._fifo = None

    def reset_cache(self) -> None:
        """Forget every cached hash (e.g. after weights change); used blocks keep their KV."""
        self.cached.clear()
        self._hash_of = [None] * self.num_blocks
        if self.event_log is not None:
            self.event_log.cleared()

    def check_invariants(self) -> None:
        """Assert the pool's invariants; O(num_blocks), for tests and debugging."""
        free = set(self._lru.ids()) if self._fifo is None else set(self._fifo.ids())
        if self._fifo is None:
            self._lru.check_invariants()
        for b in range(self.num_blocks):
            assert self._ref[b] >= 0, f"block {b} has ref {self._ref[b]}"
            assert (self._ref[b] == 0) == (b in free), f"block {b}: ref/free mismatch"
        for h, b in self.cached.items():
            assert self._hash_of[b] == h, f"cache maps {h} to block {b} holding {self._hash_of[b]}"
        assert self.num_free_blocks == len(free), "a block is queued twice"
        assert self.num_free_blocks + sum(1 for r in self._ref if r > 0) == self.num_blocks


class _FifoQueue:
    """Free block ids in queue order: a list whose first `_head` entries were handed out."""

    __slots__ = ("_head", "_ids")

    def __init__(self, num_blocks: int) -> None:
        self._ids = list(range(num_blocks))
        self._head = 0

    def __len__(self) -> int:
        return len(self._ids) - self._head

    def ids(self) -> list[int]:
        return self._ids[self._head:]

    def take(self, num_blocks: int) -> list[int]:
        head = self._head
        out = self._ids[head:head + num_blocks]
        head += num_blocks
        if 2 * head > len(self._ids):  # drop the handed-out prefix: amortised O(1) a block
            del self._ids[:head]
            head = 0
        self._head = head
        return out

    def extend(self, block_ids: list[int]) -> None:
        self._ids.extend(block_ids)


class _LruQueue:
    """Free block ids in eviction order (see the module docstring): `_ids[_head:]` are queue
    entries; an entry at absolute position p (list index p - `_base`) is live iff `_pos` of
    its block is p. A block not in the queue has `_pos` -1."""

    __slots__ = ("_base", "_head", "_ids", "_pos", "num_free")

    def __init__(self, num_blocks: int) -> None:
        self._ids = list(range(num_blocks))
        self._pos = list(range(num_blocks))
        self._base = 0  # absolute position of _ids[0]
        self._head = 0
        self.num_free = num_blocks

    def take(self, num_blocks: int) -> list[int]:
        """Remove and return the first `num_blocks` free blocks (the caller checked there are)."""
        ids, pos = self._ids, self._pos
        head = self._head
        where = self._base + head  # absolute position of ids[head]
        out: list[int] = []
        while len(out) < num_blocks:
            b = ids[head]
            if pos[b] == where:
                pos[b] = -1
                out.append(b)
            head += 1
            where += 1
        self.num_free -= num_blocks
        if 2 * head > len(ids):  # drop the handed-out prefix: amortised O(1) a block
            del ids[:head]
            self._base += head
            head = 0
        self._head = head
        return out

    def remove(self, block_id: int) -> None:
        """Take a free block out of the middle; its entry goes stale."""
        assert self._pos[block_id] >= 0, f"block {block_id} is not free"
        self._pos[block_id] = -1
        self.num_free -= 1

    def push(self, block_id: int) -> None:
        """Append a newly free block at the tail."""
        ids = self._ids
        self._pos[block_id] = self._base + len(ids)
        ids.append(block_id)
        self.num_free += 1
        if len(ids) - self._head > 2 * self.num_free + 1024:  # mostly stale: rebuild
            live = self.ids()
            self._ids, self._base, self._head = live, 0, 0
            for i, b in enumerate(live):
                self._pos[b] = i

    @classmethod
    def of(cls, num_blocks: int, free_ids: list[int]) -> _LruQueue:
        """A queue holding `free_ids`, in that order, of blocks 0..num_blocks-1."""
        queue = cls(0)
        queue._ids = list(free_ids)
        queue._pos = [-1] * num_blocks
        for i, b in enumerate(free_ids):
            queue._pos[b] = i
        queue.num_free = len(free_ids)
        return queue

    def ids(self) -> list[int]:
        """The free blocks in queue order."""
        pos, base, ids = self._pos, self._base, self._ids
        return [ids[i] for i in range(self._head, len(ids)) if pos[ids[i]] == base + i]

    def check_invariants(self) -> None:
        live = self.ids()
        assert len(live) == self.num_free == len(set(live)), "free count or a duplicate entry"
        assert sum(1 for p in self._pos if p >= 0) == self.num_free, "a free block lost its entry"
