"""What the prefix cache did, as events: vLLM's KV-cache events (BlockStored, BlockRemoved,
AllBlocksCleared), recorded by the block pool and the manager when a `KvEventLog` is attached.

- BlockStored: full blocks whose hashes were just published (a run of consecutive blocks of one
  request; `parent_block_hash` is the hash of the block before the first, None for a prompt's
  first block); `token_ids` covers them in order (empty for a request without token ids, the
  simulator's);
- BlockRemoved: hashes dropped from the cache (their blocks handed out again);
- AllBlocksCleared: `reset_cache` forgot every hash.

Nothing is recorded unless a log is attached (`BlockPool.event_log`, None by default): the
simulator's hot path pays one `is None` check per allocation and per publication. The engine
drains the log after every step (`take`) and hands the batch to its publisher.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AllBlocksCleared", "BlockRemoved", "BlockStored", "KvEvent", "KvEventLog"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockStored:
    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KvEventLog:
    """The events since the last `take`, in the order they happened."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[KvEvent] = []

    def stored(self, block_hashes: tuple[int, ...], parent_block_hash: int | None,
               token_ids: tuple[int, ...], block_size: int) -> None:
        self.events.append(BlockStored(block_hashes=block_hashes,
                                       parent_block_hash=parent_block_hash,
                                       token_ids=token_ids, block_size=block_size))

    def removed(self, block_hashes: tuple[int, ...]) -> None:
        self.events.append(BlockRemoved(block_hashes))

    def cleared(self) -> None:
        self.events.append(AllBlocksCleared())

    def take(self) -> list[KvEvent]:
        """The events recorded since the last call (a new list each time)."""
        events, self.events = self.events, []
        return events
