"""KV cache mechanism: block pool with prefix caching and chained hashes.

The per-request manager lives in `shunter.core.kv.manager` (it needs `core.request`, which
itself needs the hasher from here, so this package does not import it).
"""

from shunter.core.kv.block_pool import BlockPool
from shunter.core.kv.hashing import BlockHasher, request_salt

__all__ = ["BlockHasher", "BlockPool", "request_salt"]
