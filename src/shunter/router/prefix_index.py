"""What a router remembers about where prompt prefixes went: an approximate per-replica index.

A router never sees a replica's cache, only what it routed there. Like the SGLang router's
approximate radix tree (sgl-router `src/policies/cache_aware.rs`), it keeps, per replica, the
prompts it sent, here as chained block hashes: block j's hash folds in block j-1's, so a hit on
block j means the whole prefix up to j matches (the same idea as `core/kv/hashing.py`, kept
separate because a router may import only `core.types`).

Blocks come from the request, in the request's own unit of `hash_block_size` tokens:

- `hash_ids` (simulator traces, Mooncake-style): one block per id; the last may be partial;
- else `prompt_token_ids` (engine, gateway): the tokens cut into `hash_block_size` chunks;
- else the prompt shares nothing: one anonymous entry that matches nothing but still takes
  room, because on the replica it evicts other prefixes too.

Bound: each replica's index holds at most `num_total_blocks * block_size` tokens (its whole KV
capacity, from the view at insert time); beyond that the least recently routed blocks go first.
A prompt's blocks are touched tail first, so its root is the most recent and a shared prefix
outlives the private tails hanging off it (vLLM frees a request's blocks in reverse order for
the same reason). The index is approximate: it forgets nothing that the replica evicted early
(running requests pin memory, so the replica caches less than its capacity) and it learns
nothing that another router sent there.

Exact state: a replica whose engine publishes its KV-cache events (vLLM's BlockStored /
BlockRemoved, fed by the gateway) is answered from `exact` (`router/exact_index.py`) instead,
while that replica's event history is complete; the approximation is still kept for it, to fall
back on when the history breaks. The exact index needs the prompt's token ids: the gateway
gets a text or chat prompt's from a backend's /tokenize (`gateway/prompt_ids.py`) and keeps its
text `hash_ids` beside them (the approximation keys `hash_ids`, the exact index the ids); a
request that carries only `hash_ids` (a trace, a prompt /tokenize failed on) stays approximate.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from shunter.core.types import RequestSpec
from shunter.router.interface import ReplicaView

__all__ = ["ROOT_HASH", "DispatchIndex", "ExactSource", "PrefixIndex", "PromptBlocks", "chain_key", "prompt_blocks"]

ROOT_HASH = 0x524F5554  # "ROUT": the parent of every first block


def chain_key(parent: Hashable, piece: object) -> int:
    """A block's key: its content folded into its parent's key (`ROOT_HASH` for a first block).
    Token pieces are tuples of ints, so keys are the same in every process."""
    return hash((parent, piece))


class _HasRequestId(Protocol):
    @property
    def request_id(self) -> str: ...


class ExactSource(Protocol):
    """What replicas report holding (`router/exact_index.py`); None: no exact answer for it."""

    def match_tokens(self, replica_id: int, token_ids: tuple[int, ...]) -> int | None:
        """Tokens of the longest prefix of `token_ids` the replica holds, or None."""
        ...

    def num_tokens(self, replica_id: int) -> int | None:
        """Tokens the replica holds, or None."""
        ...


@dataclass(frozen=True, slots=True)
class PromptBlocks:
    """A prompt as chained block keys, with the number of tokens each block covers."""

    keys: tuple[Hashable, ...]
    num_tokens: tuple[int, ...]
    token_ids: tuple[int, ...] | None = None  # the prompt's ids, for the exact index

    @property
    def num_prompt_tokens(self) -> int:
        return sum(self.num_tokens)


def prompt_blocks(request: RequestSpec, anonymous_key: Hashable) -> PromptBlocks:
    """Chain `request`'s prompt into block keys; `anonymous_key` names a prompt that shares nothing."""
    total, size = request.num_prompt_tokens, request.hash_block_size
    if request.hash_ids:
        pieces: list[object] = list(request.hash_ids)
    elif request.prompt_token_ids is not None:
        ids = request.prompt_token_ids
        pieces = [ids[start:start + size] for start in range(0, total, size)]
    else:
        return PromptBlocks((anonymous_key,), (total,))
    keys: list[Hashable] = []
    counts: list[int] = []
    parent: Hashable = ROOT_HASH
    for j, piece in enumerate(pieces):
        num_tokens = min(size, total - j * size)
        if num_tokens <= 0:  # more hash ids than the prompt needs: ignore the extra ones
            break
        parent = chain_key(parent, piece)
        keys.append(parent)
        counts.append(num_tokens)
    return PromptBlocks(tuple(keys), tuple(counts), request.prompt_token_ids)


class PrefixIndex:
    """Per replica, an LRU of block keys -> tokens, bounded by that replica's KV capacity."""

    __slots__ = ("_blocks", "_num_anonymous", "_num_tokens", "exact")

    def __init__(self, exact: ExactSource | None = None) -> None:
        self.exact = exact  # replicas' own reports of their blocks, where they publish them
        self._blocks: dict[int, OrderedDict[Hashable, int]] = {}
        self._num_tokens: dict[int, int] = {}
        self._num_anonymous = 0  # names prompts that share nothing, deterministically

    def blocks_of(self, request: RequestSpec) -> PromptBlocks:
        """`request`'s prompt as block keys (a fresh anonymous key if it shares nothing)."""
        self._num_anonymous += 1
        return prompt_blocks(request, ("anonymous", self._num_anonymous))

    def match_all(self, blocks: PromptBlocks, replicas: Sequence[ReplicaView]) -> list[int]:
        """Matched prefix tokens on each of `replicas`, in their order."""
        return [self.match_tokens(v.replica_id, blocks) for v in replicas]

    def record(self, blocks: PromptBlocks, view: ReplicaView) -> None:
        """Remember that `blocks` went to `view`'s replica, bounded by its KV capacity in tokens."""
        self.insert(view.replica_id, blocks, view.num_total_blocks * view.block_size)

    @property
    def replica_ids(self) -> Iterator[int]:
        """Replicas with something indexed."""
        return iter(self._blocks)

    def num_tokens(self, replica_id: int) -> int:
        """Tokens indexed for a replica (SGLang's "tree size")."""
        if self.exact is not None:
            num_exact = self.exact.num_tokens(replica_id)
            if num_exact is not None:
                return num_exact
        return self._num_tokens.get(replica_id, 0)

    def match_tokens(self, replica_id: int, blocks: PromptBlocks) -> int:
        """Tokens of the longest indexed prefix of `blocks` on the replica."""
        if self.exact is not None and blocks.token_ids is not None:
            num_exact = self.exact.match_tokens(replica_id, blocks.token_ids)
            if num_exact is not None:
                return num_exact
        lru = self._blocks.get(replica_id)
        if not lru:
            return 0
        matched = 0
        for key, num_tokens in zip(blocks.keys, blocks.num_tokens, strict=True):
            num_indexed = lru.get(key, 0)
            matched += min(num_indexed, num_tokens)
            if num_indexed < num_tokens:  # missing, or a partial block that was sent shorter
                break
        return matched

    def insert(self, replica_id: int, blocks: PromptBlocks, max_tokens: int) -> None:
        """Record that `blocks` went to the replica; evict LRU blocks beyond `max_tokens`."""
        lru = self._blocks.setdefault(replica_id, OrderedDict())
        total = self._num_tokens.get(replica_id, 0)
        for key, num_tokens in zip(reversed(blocks.keys), reversed(blocks.num_tokens), strict=True):
            num_indexed = lru.pop(key, 0)
            lru[key] = max(num_indexed, num_tokens)  # (re)inserted as the most recent
            total += max(0, num_tokens - num_indexed)
        while total > max_tokens and lru:
            _, num_tokens = lru.popitem(last=False)
            total -= num_tokens
        self._num_tokens[replica_id] = total


class DispatchIndex:
    """Where a gateway tier sent prompts, for a prefix-aware gateway policy (DLPM at the
    gateway): the blocks of each waiting request, probed against an index of the prompts
    dispatched to each replica so far (`probe`: the best replica's matched tokens)."""

    __slots__ = ("_index", "_waiting")

    def __init__(self) -> None:
        self._index = PrefixIndex()
        self._waiting: dict[str, PromptBlocks] = {}

    def add(self, request: RequestSpec) -> None:
        """A request started waiting."""
        self._waiting[request.request_id] = self._index.blocks_of(request)

    def probe(self, request: _HasRequestId) -> int:
        """Prompt tokens of a waiting request the best replica is believed to hold."""
        blocks = self._waiting.get(request.request_id)
        if blocks is None:
            return 0
        index = self._index
        return max((index.match_tokens(r, blocks) for r in index.replica_ids), default=0)

    def dispatched(self, request_id: str, view: ReplicaView) -> None:
        """The request left the queue for `view`'s replica."""
        blocks = self._waiting.pop(request_id, None)
        if blocks is not None:
            self._index.record(blocks, view)

    def forget(self, request_id: str) -> None:
        """The request left the queue without being dispatched."""
        self._waiting.pop(request_id, None)
