"""KV cache mechanism: block pool with prefix caching, chained hashes, and KV-cache events.

The per-request manager lives in `shunter.core.kv.manager` (it needs `core.request`, which
itself needs the hasher from here, so this package does not import it).
"""

from shunter.core.kv.block_pool import BlockPool
from shunter.core.kv.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvEvent,
    KvEventLog,
)
from shunter.core.kv.hashing import BlockHasher, request_salt

__all__ = ["AllBlocksCleared", "BlockHasher", "BlockPool", "BlockRemoved", "BlockStored",
           "KvEvent", "KvEventLog", "request_salt"]
