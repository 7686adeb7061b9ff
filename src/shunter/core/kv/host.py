"""Host KV blocks that outlive a swap: FastSwitch's KV reuse (Shen et al. 2024).

vLLM frees a request's host copy as soon as it is swapped back in, so a request preempted
again copies its whole KV out again, and the next turn of a conversation recomputes a history
whose KV went back and forth over PCIe moments earlier. Here a full block's host copy stays,
keyed by its block hash, after swap-in (and after a finished conversation turn is offloaded):
a later swap-out copies only blocks the host lacks, and a new request whose prompt continues a
cached prefix copies those blocks in instead of recomputing them. Unused copies are evicted in
LRU order when the host pool needs room.

Invariants: a host block is used (ref > 0), free-cached (ref 0, in `_lru`, has a hash) or free
(ref 0, in `_free`, no hash); `_cached` maps a hash only to a block that carries it.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["HostCache"]


class HostCache:
    __slots__ = ("_cached", "_free", "_hash_of", "_lru", "_ref", "num_blocks")

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out 0 first
        self._lru: OrderedDict[int, None] = OrderedDict()
        self._ref = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}  # block hash -> host block

    @property
    def num_available(self) -> int:
        """Blocks that can be handed out (free, or cached and unused)."""
        return len(self._free) + len(self._lru)

    def lookup(self, block_hash: int | None) -> int | None:
        return None if block_hash is None else self._cached.get(block_hash)

    def acquire(self, block_id: int) -> None:
        """Take a reference on a cached host block (it is reused, not copied)."""
        if self._ref[block_id] == 0:
            del self._lru[block_id]
        self._ref[block_id] += 1

    def allocate(self, block_hash: int | None) -> int:
        """A host block for a new copy (evicting the least recently used cached one if needed),
        registered under `block_hash` when given and not cached yet."""
        if self._free:
            block_id = self._free.pop()
        else:
            block_id, _ = self._lru.popitem(last=False)
            old = self._hash_of[block_id]
            assert old is not None, "only cached blocks wait in the LRU"
            del self._cached[old]
            self._hash_of[block_id] = None
        self._ref[block_id] = 1
        if block_hash is not None and block_hash not in self._cached:
            self._hash_of[block_id] = block_hash
            self._cached[block_hash] = block_id
        return block_id

    def release(self, block_ids: list[int]) -> None:
        """Drop one reference each; a cached block stays reusable until evicted."""
        for block_id in block_ids:
            assert self._ref[block_id] > 0, f"double release of host block {block_id}"
            self._ref[block_id] -= 1
            if self._ref[block_id] == 0:
                if self._hash_of[block_id] is None:
                    self._free.append(block_id)
                else:
                    self._lru[block_id] = None

    def check_invariants(self) -> None:
        """O(num_blocks), for tests."""
        free, lru = set(self._free), set(self._lru)
        for b in range(self.num_blocks):
            if self._ref[b] > 0:
                assert b not in free and b not in lru, f"host block {b} used and free"
            else:
                assert (b in free) != (b in lru), f"host block {b} lost"
                assert (b in lru) == (self._hash_of[b] is not None), f"host block {b} hash/LRU"
        for h, b in self._cached.items():
            assert self._hash_of[b] == h, f"host cache maps {h} to {b}"
