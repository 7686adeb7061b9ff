"""How much memory a simulated cluster needs, and whether this machine has it.

A simulated replica is almost nothing but its KV bookkeeping: per device block, the pool's
reference count, hash slot and free-queue entry, and, once the prefix cache fills (a trace with
shared prefixes, such as Mooncake's hash ids, fills it up to every block), a cache entry; per
host block, a free-list entry. Measured with tracemalloc on `build_cluster` and after runs that
filled the cache (Python 3.11, roofline cost model):

    llama-3.1-8b on a100-80gb: 28,056 blocks + 2,048 host blocks   2.75 MB a replica built
    llama-3.1-8b on h200:      55,889 blocks + 2,048 host blocks   5.42 MB
    llama-3.1-70b, tp 8, h100: 87,718 blocks +   819 host blocks   8.43 MB
    num_blocks = 1, no swap space                                   2.2 KB
    a full prefix cache                                             +115-120 B a block

so a replica takes about REPLICA_BYTES + KV_BLOCK_BYTES a block (NO_CACHE_KV_BLOCK_BYTES
with prefix caching off) + CACHED_BLOCK_BYTES a block (prefix caching on) + HOST_BLOCK_BYTES a
host block: 6.1 MB for the first line above, 6.1 GB for 1,000 such replicas. The estimate
covers the replicas only; the workload's requests and records come on top and grow with the
trace, not the cluster.

A run whose estimate exceeds the memory this machine has available (MemAvailable in
/proc/meminfo, or what is left under a cgroup v2 memory limit, whichever is less) is refused
with a ConfigError before anything is built. Where neither can be read, nothing is checked.
"""

from __future__ import annotations

from pathlib import Path

from shunter.errors import ConfigError

__all__ = ["CACHED_BLOCK_BYTES", "HOST_BLOCK_BYTES", "KV_BLOCK_BYTES", "NO_CACHE_KV_BLOCK_BYTES",
           "REPLICA_BYTES", "available_memory_bytes", "check_memory", "replica_bytes"]

REPLICA_BYTES = 4096  # scheduler, policy, executor and replica objects (2.2 KB measured)
KV_BLOCK_BYTES = 96  # ref count, hash slot, LRU free-queue entry (an int object past 256); a
# caching pool starts with the FIFO queue and turns to the LRU one at its first published hash
NO_CACHE_KV_BLOCK_BYTES = 56  # without prefix caching: a FIFO free queue and no hash slots
CACHED_BLOCK_BYTES = 120  # a prefix-cache dict entry and its 64-bit hash int
HOST_BLOCK_BYTES = 40  # an entry of the host (swap) free list

MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: memory.max, memory.current

_ADVICE = ("use fewer replicas (--replicas, a group's count), fewer KV blocks a replica "
           "([cluster] num_blocks, swap_space_gib), fewer worker processes (--workers), or a "
           "machine with more memory")


def replica_bytes(num_blocks: int, num_host_blocks: int, *, prefix_caching: bool,
                  copies: int = 1) -> int:
    """The estimated memory of one simulated replica (see the module docstring), built in
    `copies` processes of which one runs its requests (`simulate_parallel`'s workers each
    build the whole cluster), so only that one fills its prefix cache."""
    if prefix_caching:
        built = REPLICA_BYTES + KV_BLOCK_BYTES * num_blocks + HOST_BLOCK_BYTES * num_host_blocks
        return copies * built + CACHED_BLOCK_BYTES * num_blocks
    return copies * (REPLICA_BYTES + NO_CACHE_KV_BLOCK_BYTES * num_blocks
                     + HOST_BLOCK_BYTES * num_host_blocks)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):  # absent, unreadable, or "max" (no limit)
        return None


def _meminfo_available(path: Path) -> int | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, rest = line.partition(":")
        if name == "MemAvailable":
            fields = rest.split()
            return int(fields[0]) * 1024 if fields and fields[0].isdigit() else None  # kB
    return None


def available_memory_bytes(meminfo: Path = MEMINFO, cgroup: Path = CGROUP) -> int | None:
    """Memory this process can still allocate: MemAvailable, capped by the room left under a
    cgroup v2 limit (a container's); None where neither can be read (not Linux)."""
    found = [_meminfo_available(meminfo)]
    limit, used = _read_int(cgroup / "memory.max"), _read_int(cgroup / "memory.current")
    if limit is not None and used is not None:
        found.append(max(limit - used, 0))
    known = [n for n in found if n is not None]
    return min(known) if known else None


def _gb(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.1f} GB"


def check_memory(needed_bytes: int, what: str, *, available_bytes: int | None = None) -> None:
    """Raise ConfigError if `needed_bytes` (for `what`, e.g. "20000 replicas (6.1 MB each)")
    is more than this machine has available (`available_bytes`, read when None)."""
    available = available_bytes if available_bytes is not None else available_memory_bytes()
    if available is None or needed_bytes <= available:
        return
    raise ConfigError(f"simulating {what} needs about {_gb(needed_bytes)} of memory, more than "
                      f"the {_gb(available)} available on this machine; {_ADVICE}")
