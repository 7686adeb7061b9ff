"""Per-request KV bookkeeping on top of the block pool: prefix hits, slots, swap, free.

The manager answers "does it fit" with return values (STYLE.md section 8): a request that
cannot get its blocks gets False and the scheduler decides whom to preempt.

`contiguous=True` approximates FastSwitch's block groups (Shen et al. 2024): a request's new
block is the id after its last one when that block is free, so its KV forms long runs of
consecutive ids that a swap copies in few transfers; otherwise a new run starts in the middle
of the longest stretch of free ids, leaving room on both sides (requests decoding in lockstep
would otherwise take each other's next ids). This ignores LRU order for the blocks it takes,
so it suits engines without a prefix cache (FastSwitch's vLLM baseline had none). Plain LRU
order scatters a request's blocks, one transfer each (vLLM).

`host_reuse=True` keeps host copies of full blocks after swap-in, keyed by block hash
(`HostCache`, FastSwitch's KV reuse): a request swapped out again copies only what the host
lacks, a finished conversation turn is offloaded (`offload`), and a new request continuing a
host-cached prefix has it copied in (`host_prefix`, then `allocate_slots(host_hits=...)`)
instead of recomputed.
"""

from __future__ import annotations

import sys

from shunter.core.kv.block_pool import BlockPool
from shunter.core.kv.host import HostCache
from shunter.core.request import Request

__all__ = ["KVCacheManager"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    __slots__ = ("_free_host", "block_size", "contiguous", "host", "num_host_blocks", "pool")

    def __init__(self, num_blocks: int, block_size: int, *, enable_caching: bool = True,
                 num_host_blocks: int = 0, contiguous: bool = False,
                 host_reuse: bool = False) -> None:
        self.pool = BlockPool(num_blocks, enable_caching=enable_caching, fifo_free=not contiguous)
        self.block_size = block_size
        self.contiguous = contiguous
        self.host = HostCache(num_host_blocks) if host_reuse else None
        self.num_host_blocks = num_host_blocks
        self._free_host = list(range(num_host_blocks - 1, -1, -1))  # pop() hands out 0 first

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_free_host_blocks(self) -> int:
        return len(self._free_host)

    def num_blocks_for(self, num_tokens: int) -> int:
        return _cdiv(num_tokens, self.block_size)

    def computed_blocks(self, request: Request) -> list[int]:
        """The longest cached prefix of the request's known tokens, as block ids.

        At least one token is always left to compute, since the step that computes the last
        token is the one that samples the next.
        """
        if not self.pool.enable_caching:
            return []
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[int] = []
        lookup = self.pool.lookup
        for block_hash in request.block_hashes[:max_blocks]:
            block_id = lookup(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def host_prefix(self, request: Request, num_hit_blocks: int) -> list[int]:
        """Host blocks continuing the request's first `num_hit_blocks` device hits (host reuse)."""
        if self.host is None:
            return []
        max_blocks = (request.num_tokens - 1) // self.block_size
        found: list[int] = []
        for block_hash in request.block_hashes[num_hit_blocks:max_blocks]:
            block_id = self.host.lookup(block_hash)
            if block_id is None:
                break
            found.append(block_id)
        return found

    def allocate_slots(self, request: Request, num_new_tokens: int, *,
                       hit_blocks: list[int] | None = None, reserve_blocks: int = 0,
                       host_hits: list[int] | None = None,
                       copies: list[tuple[int, int]] | None = None) -> bool:
        """Make room for `num_new_tokens` more computed tokens, after taking any cache hits.

        `host_hits` (host blocks continuing the device hits) get device blocks and count as
        computed; their (host, device) copies are appended to `copies`.
        Fails (returning False, changing nothing) unless `reserve_blocks` stay free afterwards.
        """
        hits = hit_blocks or []
        host = host_hits or []
        num_have = len(request.block_ids) + len(hits)
        num_computed = request.num_computed_tokens + len(hits) * self.block_size
        num_needed = (self.num_blocks_for(num_computed + len(host) * self.block_size
                                          + num_new_tokens) - num_have)
        num_needed = max(num_needed, 0)
        num_taken = num_needed + (self.pool.num_free_among(hits) if hits else 0)
        if num_taken + reserve_blocks > self.pool.num_free_blocks:
            return False
        if hits:
            self.pool.touch(hits)
            request.block_ids.extend(hits)
            request.num_published_blocks = len(request.block_ids)
            request.num_computed_tokens = num_computed
        if num_needed:
            last = request.block_ids[-1] if request.block_ids else None
            new = self._allocate(num_needed, last)
            if host:
                assert copies is not None, "host hits need a list for their copies"
                copies.extend(zip(host, new, strict=False))
                request.num_computed_tokens += len(host) * self.block_size
            request.block_ids.extend(new)
        return True

    def _allocate(self, num_blocks: int, last: int | None) -> list[int]:
        """`num_blocks` free blocks; contiguous mode continues the run that ends at `last`."""
        if not self.contiguous:
            return self.pool.allocate(num_blocks)
        out: list[int] = []
        take_free = self.pool.take_free
        for _ in range(num_blocks):
            if last is not None and take_free(last + 1):
                last += 1
            else:  # a new run, where it has room: not right behind another request's run
                start = self.pool.roomiest_free_block()
                assert start is not None and take_free(start), "caller checked the fit"
                last = start
            out.append(last)
        return out

    def publish(self, request: Request) -> None:
        """Put the hashes of the request's newly full, computed blocks into the prefix cache
        (up to its `publish_limit`)."""
        num_full = min(request.num_computed_tokens // self.block_size, len(request.block_hashes),
                       request.publish_limit)
        start = request.num_published_blocks
        if num_full <= start:
            return
        if self.pool.event_log is not None:
            self._publish_logged(request, start, num_full)
        else:
            cache, ids, hashes = self.pool.cache, request.block_ids, request.block_hashes
            for j in range(start, num_full):
                cache(ids[j], hashes[j])
        request.num_published_blocks = num_full

    def _publish_logged(self, request: Request, start: int, num_full: int) -> None:
        """`publish` with a KV event log attached: each run of blocks newly cached (not already
        held under their hash by another block) is recorded as one BlockStored."""
        log = self.pool.event_log
        assert log is not None
        cache, ids, hashes = self.pool.cache, request.block_ids, request.block_hashes
        bs, tokens = self.block_size, request.token_ids
        run_start: int | None = None
        for j in range(start, num_full + 1):
            if j < num_full and cache(ids[j], hashes[j]):
                if run_start is None:
                    run_start = j
                continue
            if run_start is not None:
                log.stored(tuple(hashes[run_start:j]),
                           hashes[run_start - 1] if run_start else None,
                           tuple(tokens[run_start * bs:j * bs]) if tokens is not None else (),
                           bs)
                run_start = None

    def free(self, request: Request, *, alive: bool = False) -> None:
        """Release the request's device blocks, tail first so shared heads are evicted last.

        `alive`: the request goes on (a recompute preemption, a move; `swap_out` does the same
        itself), so it may come back for its own private blocks: they are published first, and
        as they fill from now on."""
        if alive:
            self._share_private(request)
        if request.block_ids:
            self.pool.free(reversed(request.block_ids))
            request.block_ids = []
        request.num_published_blocks = 0

    def _share_private(self, request: Request) -> None:
        """The request may come back for its private blocks: hash and publish them now, as
        eager publication would have as they filled (see `Request.publish_limit`)."""
        if request.publish_limit != sys.maxsize:
            request.share_all_blocks()
            if self.pool.enable_caching and request.block_hashes:
                self.publish(request)

    def _full_hashes(self, request: Request) -> list[int | None]:
        """Per device block, its hash if the block is full and computed (copies reusable)."""
        num_full = min(request.num_computed_tokens // self.block_size, len(request.block_hashes))
        return [request.block_hashes[i] if i < num_full else None
                for i in range(len(request.block_ids))]

    def can_swap_out(self, request: Request) -> bool:
        if self.host is None:
            return len(request.block_ids) <= len(self._free_host)
        return len(request.block_ids) <= self.host.num_available  # conservative: reuse is free

    def swap_out(self, request: Request) -> list[tuple[int, int]]:
        """Move the request's KV to host blocks; returns (device, host) copy pairs (with host
        reuse, only for blocks the host does not hold yet)."""
        self._share_private(request)  # it comes back (host reuse reads these hashes too)
        if self.host is not None:
            return self._swap_out_reusing(request)
        host = [self._free_host.pop() for _ in request.block_ids]
        pairs = list(zip(request.block_ids, host, strict=True))
        request.host_block_ids = host
        self.free(request)
        return pairs

    def _swap_out_reusing(self, request: Request) -> list[tuple[int, int]]:
        host_cache = self.host
        assert host_cache is not None
        host, pairs = [], []
        for device, block_hash in zip(request.block_ids, self._full_hashes(request), strict=True):
            block_id = host_cache.lookup(block_hash)
            if block_id is not None:
                host_cache.acquire(block_id)
            else:
                block_id = host_cache.allocate(block_hash)
                pairs.append((device, block_id))
            host.append(block_id)
        request.host_block_ids = host
        self.free(request)
        return pairs

    def offload(self, request: Request) -> list[tuple[int, int]]:
        """Copy a finishing request's full blocks the host lacks to host (host reuse; the next
        turn of its conversation can copy them back in); returns (device, host) pairs. Call
        before `free`; the copies run before the next step reuses the device blocks."""
        host_cache = self.host
        if host_cache is None:
            return []
        request.share_all_blocks()  # every full block goes to host, private ones included
        pairs = []
        for device, block_hash in zip(request.block_ids, self._full_hashes(request), strict=True):
            if block_hash is None or host_cache.lookup(block_hash) is not None:
                continue
            if not host_cache.num_available:
                break
            block_id = host_cache.allocate(block_hash)
            host_cache.release([block_id])  # kept as a cached copy
            pairs.append((device, block_id))
        return pairs

    def can_swap_in(self, request: Request, reserve_blocks: int = 0) -> bool:
        assert request.host_block_ids is not None
        return len(request.host_block_ids) + reserve_blocks <= self.pool.num_free_blocks

    def swap_in(self, request: Request) -> list[tuple[int, int]]:
        """Bring a swapped request's KV back; returns (host, device) copy pairs."""
        host = request.host_block_ids
        assert host is not None and not request.block_ids
        device = self._allocate(len(host), None)
        request.block_ids = device
        request.num_published_blocks = 0
        if self.host is not None:
            self.host.release(host)  # full blocks stay cached on the host
        else:
            self._free_host.extend(reversed(host))
        request.host_block_ids = None
        return list(zip(host, device, strict=True))

    def free_host(self, request: Request) -> None:
        """Drop a swapped request's host copy (it was aborted or finished while swapped)."""
        if request.host_block_ids:
            if self.host is not None:
                self.host.release(request.host_block_ids)
            else:
                self._free_host.extend(reversed(request.host_block_ids))
        request.host_block_ids = None
