"""Chained block hashes: the identity of a KV block is its content and everything before it.

Block j's hash folds in block j-1's hash, so equal hashes mean equal prefixes (vLLM's prefix
caching, SGLang's radix tree by another name). Three sources of identity, in order:

- token ids (the engine): hash of the block's tokens;
- workload hash ids (the simulator, Mooncake-style): the ids covering the block's tokens, each id
  spanning `hash_block_size` tokens, and the block's offset inside the first id;
- neither (a request that shares nothing): a per-request salt and the block index.

Blocks of the third kind (and those past a request's hash ids) are *private*: only the request
itself can ever match them, after its KV was freed while it goes on (a recompute preemption, a
swap-out, a move). `num_shareable_blocks` says where they start (see `Request.publish_limit`).

Python's hash of a tuple of ints is deterministic across processes (only str/bytes hashing is
salted), so runs are reproducible. The salt for unique blocks is derived from the request id
with blake2b for the same reason.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence

__all__ = ["BlockHasher", "request_salt"]

_ROOT_HASH = 0x5348554E  # "SHUN": the parent of every first block


def request_salt(request_id: str) -> int:
    """A stable 63-bit integer unique to a request id."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class BlockHasher:
    """Extends a request's list of full-block hashes as its known tokens grow."""

    __slots__ = ("_salt", "block_size", "hash_block_size", "hash_ids", "salt_id")

    def __init__(self, block_size: int, *, hash_ids: Sequence[int] | None = None,
                 hash_block_size: int = 16, salt: int = 0, salt_id: str | None = None) -> None:
        """`salt_id`: a request id whose `request_salt` is the salt instead, taken when first
        needed (most requests never hash a block of their own: `Request.publish_limit`)."""
        self.block_size = block_size
        self.hash_ids = tuple(hash_ids) if hash_ids is not None else None
        self.hash_block_size = hash_block_size
        self.salt_id = salt_id
        self._salt: int | None = salt if salt_id is None else None

    @property
    def salt(self) -> int:
        """The key of this request's unique blocks."""
        if self._salt is None:
            assert self.salt_id is not None
            self._salt = request_salt(self.salt_id)
        return self._salt

    def num_shareable_blocks(self, has_token_ids: bool) -> int:
        """Leading blocks another request may share: all with token ids, those the hash ids
        cover with them, none without (the rest are keyed by this request's salt)."""
        if has_token_ids:
            return sys.maxsize
        if self.hash_ids is None:
            return 0
        return len(self.hash_ids) * self.hash_block_size // self.block_size

    def extend(self, block_hashes: list[int], num_tokens: int,
               token_ids: Sequence[int] | None = None) -> None:
        """Append the hashes of every block that became full within the first `num_tokens`."""
        bs = self.block_size
        num_full = num_tokens // bs
        parent = block_hashes[-1] if block_hashes else _ROOT_HASH
        for j in range(len(block_hashes), num_full):
            if token_ids is not None:
                key: object = tuple(token_ids[j * bs:(j + 1) * bs])
            else:
                key = self._id_key(j)
            parent = hash((parent, key))
            block_hashes.append(parent)

    def _id_key(self, j: int) -> object:
        ids, hbs, bs = self.hash_ids, self.hash_block_size, self.block_size
        if ids is not None:
            first = (j * bs) // hbs
            last = ((j + 1) * bs - 1) // hbs
            if last < len(ids):
                return (ids[first] if first == last else ids[first:last + 1], (j * bs) % hbs)
        return (self.salt, j)
