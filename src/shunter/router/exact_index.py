"""What each replica reports holding in its prefix cache: an exact per-replica prefix index.

An engine that publishes its KV-cache events (vLLM with `--kv-events-config`: BlockStored,
BlockRemoved, AllBlocksCleared) says which blocks it holds, each named by the engine's own hash.
Those hashes depend on the engine's seed and algorithm, so they are not recomputed here: each
stored block is keyed again with the router's chained key (`prefix_index.chain_key`) over its
token ids and its parent's key, and the index keeps engine hash -> key. A prompt then matches
block by block in the router's own keys, cut at the replica's block size.

A replica's answer is exact only while its history is complete: every event since its cache was
empty. Whoever feeds the index says when it is not (`reset(..., is_complete=False)`, after a
sequence gap that could not be replayed, or when it joined late); `match_tokens` and
`num_tokens` then answer None and the router falls back on its approximation for that replica, until its cache is known empty again (AllBlocksCleared, or
the feeder sees the engine restart). Blocks made with extra keys (a LoRA, a cache salt, multimodal inputs) get keys no plain prompt
can match, and so do their children.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from shunter.router.prefix_index import ROOT_HASH, chain_key

__all__ = ["AllBlocksCleared", "BlockEvent", "BlocksRemoved", "BlocksStored",
           "ExactPrefixIndex", "ReplicaBlocks"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BlocksStored:
    """Full blocks the replica now holds: `token_ids` covers them in order, `block_size` each."""

    engine_hashes: tuple[Hashable, ...]
    parent_hash: Hashable | None  # the engine hash of the block before the first; None: a root
    token_ids: tuple[int, ...]
    block_size: int
    is_salted: bool = False  # made with extra keys: matches no plain prompt


@dataclass(frozen=True, slots=True)
class BlocksRemoved:
    """Blocks the replica evicted."""

    engine_hashes: tuple[Hashable, ...]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The replica's prefix cache was emptied (a reset)."""


BlockEvent = BlocksStored | BlocksRemoved | AllBlocksCleared


@dataclass(slots=True)
class ReplicaBlocks:
    """One replica's blocks: engine hash -> router key, and how many engine blocks hold a key."""

    block_size: int | None
    is_complete: bool = True
    keys: dict[Hashable, Hashable] = field(default_factory=dict)
    num_stored: Counter[Hashable] = field(default_factory=Counter)  # engine hash -> copies
    num_holding: Counter[Hashable] = field(default_factory=Counter)  # key -> engine hashes

    @property
    def num_blocks(self) -> int:
        return len(self.num_holding)

    def clear(self) -> None:
        self.keys.clear()
        self.num_stored.clear()
        self.num_holding.clear()


class ExactPrefixIndex:
    """Per replica, the blocks its engine reported, in the router's chained keys."""

    __slots__ = ("_last", "_replicas")

    def __init__(self) -> None:
        self._replicas: dict[int, ReplicaBlocks] = {}
        self._last: tuple[tuple[int, ...], int, list[Hashable]] | None = None  # keys memo

    def track(self, replica_id: int, block_size: int | None = None) -> None:
        """Expect events from the replica; `block_size`: its configured one (None: learn it)."""
        if block_size is not None and block_size < 1:
            raise ValueError(f"replica {replica_id}: block_size must be >= 1")
        self._replicas[replica_id] = ReplicaBlocks(block_size, is_complete=False)

    def blocks(self, replica_id: int) -> ReplicaBlocks | None:
        """The replica's state (None: not tracked)."""
        return self._replicas.get(replica_id)

    def reset(self, replica_id: int, *, is_complete: bool) -> None:
        """Forget the replica's blocks; `is_complete`: its cache is known to be empty now."""
        replica = self._replicas[replica_id]
        replica.clear()
        replica.is_complete = is_complete

    def apply(self, replica_id: int, events: Sequence[BlockEvent]) -> None:
        """Apply the replica's events in order; ValueError if its block size is not the one
        configured for it (the replica's state is then left incomplete)."""
        replica = self._replicas[replica_id]
        for event in events:
            match event:
                case BlocksStored():
                    self._store(replica_id, replica, event)
                case BlocksRemoved():
                    for engine_hash in event.engine_hashes:
                        _remove(replica, engine_hash)
                case AllBlocksCleared():  # known empty: exact from here on
                    replica.clear()
                    replica.is_complete = True

    def match_tokens(self, replica_id: int, token_ids: tuple[int, ...]) -> int | None:
        """Tokens of the longest prefix of `token_ids` the replica holds (whole blocks); None
        when its history is incomplete or it is not tracked."""
        replica = self._replicas.get(replica_id)
        if replica is None or not replica.is_complete or replica.block_size is None:
            return None
        matched = 0
        for key in self._keys(token_ids, replica.block_size):
            if key not in replica.num_holding:
                break
            matched += replica.block_size
        return matched

    def num_tokens(self, replica_id: int) -> int | None:
        """Tokens the replica holds in its cache (None: not known exactly)."""
        replica = self._replicas.get(replica_id)
        if replica is None or not replica.is_complete or replica.block_size is None:
            return None
        return replica.num_blocks * replica.block_size

    def _store(self, replica_id: int, replica: ReplicaBlocks, event: BlocksStored) -> None:
        size = event.block_size
        if replica.block_size is None:
            replica.block_size = size
        elif size != replica.block_size:
            replica.clear()
            replica.is_complete = False
            raise ValueError(f"replica {replica_id} reports blocks of {size} tokens, but its "
                             f"block_size is {replica.block_size}: set block_size = {size} for "
                             "it (the exact prefix index is off for it until then)")
        if event.parent_hash is None:
            parent: Hashable = ROOT_HASH
        elif event.parent_hash in replica.keys:
            parent = replica.keys[event.parent_hash]
        else:  # the parent was evicted, or stored before this history: no key to chain from
            return
        for j, engine_hash in enumerate(event.engine_hashes):
            piece = event.token_ids[j * size:(j + 1) * size]
            if len(piece) < size:
                break
            key = ("salted", engine_hash) if event.is_salted else chain_key(parent, piece)
            replica.num_stored[engine_hash] += 1
            if replica.num_stored[engine_hash] == 1:
                replica.keys[engine_hash] = key
                replica.num_holding[key] += 1
            parent = replica.keys[engine_hash]

    def _keys(self, token_ids: tuple[int, ...], block_size: int) -> list[Hashable]:
        """The prompt's full blocks as chained keys (memoized for the prompt last asked about,
        which the router asks about once per replica)."""
        last = self._last
        if last is not None and last[0] is token_ids and last[1] == block_size:
            return last[2]
        keys: list[Hashable] = []
        parent: Hashable = ROOT_HASH
        for start in range(0, len(token_ids) - block_size + 1, block_size):
            parent = chain_key(parent, token_ids[start:start + block_size])
            keys.append(parent)
        self._last = (token_ids, block_size, keys)
        return keys


def _remove(replica: ReplicaBlocks, engine_hash: Hashable) -> None:
    count = replica.num_stored.get(engine_hash, 0)
    if count == 0:  # stored before this history, or its parent was unknown
        return
    if count > 1:
        replica.num_stored[engine_hash] = count - 1
        return
    del replica.num_stored[engine_hash]
    key = replica.keys.pop(engine_hash)
    replica.num_holding[key] -= 1
    if replica.num_holding[key] == 0:
        del replica.num_holding[key]
