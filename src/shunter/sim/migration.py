"""Llumnix-style live migration of running requests between replicas (Sun et al., OSDI'24).

Every `interval_s` (`MigrationConfig`), each replica's *freeness* is measured as Llumnix's
llumlets do, from *virtual* usage: KV blocks held, plus the blocks every waiting prompt will
need (so a queue blocked at its head reads as load: de-fragmentation), plus a headroom per
running high-priority request (so a replica serving them reads as loaded, sheds normal
requests and keeps their batch small: priority isolation). As in Llumnix, where llumlets
report virtual usage to the global scheduler, the headroom is in the replicas' views, so the
dispatcher sends new requests elsewhere too (`SimReplica.priority_headroom`):

    F = (total blocks - virtual usage) / requests        (inf when it has none)

Replicas below `out_threshold` are sources, in order of least free; those above
`in_threshold` destinations, freest first; each pair moves one request (the latest-arriving
running one that is decoding and not high-priority: Llumnix's "last come running" choice,
short KV, cheap to move). A replica takes part in one migration at a time.

The move, multi-stage as in the paper: stage 1 copies the KV the request holds while it keeps
decoding on the source; each next stage copies what it computed meanwhile. When that is at most
`last_stage_max_blocks` (or after `max_stages` stages), the source drops it from its batch at
its next step boundary (`SimReplica.detach`), the last tokens are copied (the only downtime),
and it joins the destination's batch at that replica's next boundary (`attach`) with the same
tokens: none is lost or repeated. Copy times are `cost_model.kv_transfer_time_s` over the link.
A request that finishes during the stages is left alone (aborted migration); one the
destination can no longer take recomputes there (`requeue`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from shunter.core.request import Request
from shunter.core.types import RequestId, RequestStatus
from shunter.sim.config import MigrationConfig
from shunter.sim.handoff import MovedRequest
from shunter.sim.ops import ClusterOps
from shunter.sim.replica import SimReplica

__all__ = ["MIGRATION_STAGE_TIMER", "MIGRATION_TICK_TIMER", "Migrator", "virtual_freeness"]

MIGRATION_TICK_TIMER = "migration_tick"
MIGRATION_STAGE_TIMER = "migration_stage"


@dataclass(slots=True)
class _Migration:
    request_id: RequestId
    src: SimReplica
    dst: SimReplica
    num_copied_tokens: int = 0
    num_stages: int = 0
    moved: MovedRequest | None = None  # set once detached for the final copy


def virtual_freeness(replica: SimReplica, incoming_blocks: int = 0) -> float:
    """Free blocks per request after virtual usage (see the module docstring; the view already
    counts the priority headroom, which the cluster set on the replica)."""
    view = replica.view()
    if view.num_requests == 0 and not incoming_blocks:
        return math.inf
    bs = view.block_size
    virtual = (view.num_total_blocks - view.num_free_blocks + incoming_blocks
               + -(-view.num_waiting_tokens // bs))
    return (view.num_total_blocks - virtual) / max(view.num_requests, 1)


def _fits(dst: SimReplica, request: Request) -> bool:
    """Whether `dst` has a batch slot and the request's blocks now (its view: exact
    mid-run too); `attach` checks again when the request arrives."""
    view = dst.view()
    need = -(-request.num_computed_tokens // view.block_size)
    return (view.num_running < dst.scheduler.config.max_num_seqs
            and need < view.num_free_blocks)


class Migrator:
    def __init__(self, ops: ClusterOps, replicas: Sequence[SimReplica], config: MigrationConfig,
                 *, kv_link_bytes_s: float) -> None:
        self.ops = ops
        self.replicas = list(replicas)
        self.config = config
        self.kv_link_bytes_s = kv_link_bytes_s
        self._active: dict[int, _Migration] = {}
        self._next_key = 0
        self.num_started = 0
        self.num_completed = 0
        self.num_aborted = 0
        self.num_requeued = 0
        self.downtime_s: list[float] = []
        if config.high_priority is not None and config.priority_headroom_blocks:
            for replica in self.replicas:
                replica.priority_headroom = (config.high_priority, config.priority_headroom_blocks)

    @property
    def is_active(self) -> bool:
        """Whether a tick could do anything (something runs, or a migration is under way)."""
        return bool(self._active) or any(r.scheduler.running for r in self.replicas)

    def tick(self) -> None:
        """Pair overloaded with free replicas and start one migration per pair."""
        cfg = self.config
        busy = {id(m.src) for m in self._active.values()} | {id(m.dst) for m in self._active.values()}
        free = [(virtual_freeness(r), r.replica_id, r) for r in self.replicas if id(r) not in busy]
        sources = sorted(x for x in free if x[0] < cfg.out_threshold)
        dests = sorted((x for x in free if x[0] > cfg.in_threshold), key=lambda x: (-x[0], x[1]))
        for (_, _, src), (_, _, dst) in zip(sources, dests, strict=False):
            request_id = self._pick(src, dst)
            if request_id is not None:
                self._start(src, dst, request_id)

    def is_migrating(self, replica: SimReplica) -> bool:
        """Whether `replica` sends or receives a migration under way."""
        return any(m.src is replica or m.dst is replica for m in self._active.values())

    def drain_one(self, src: SimReplica, dst: SimReplica) -> bool:
        """Start moving one running request off `src`, a replica being drained (autoscaling:
        any priority), to `dst`; False when neither is free to or none fits now."""
        if self.is_migrating(src) or self.is_migrating(dst):
            return False
        request_id = self._pick(src, dst, any_priority=True)
        if request_id is None:
            return False
        self._start(src, dst, request_id)
        return True

    def _pick(self, src: SimReplica, dst: SimReplica, *,
              any_priority: bool = False) -> RequestId | None:
        """The latest-arriving running request that decodes, is not high priority (unless
        `any_priority`) and fits."""
        high = None if any_priority else self.config.high_priority
        latest_first = sorted(src.scheduler.running, key=lambda r: (r.arrival_s, r.request_id),
                              reverse=True)
        for request in latest_first:
            if request.is_prefilling or (high is not None and request.priority <= high):
                continue
            if _fits(dst, request):
                return request.request_id
        return None

    def _start(self, src: SimReplica, dst: SimReplica, request_id: RequestId) -> None:
        key = self._next_key
        self._next_key += 1
        self._active[key] = _Migration(request_id, src, dst)
        self.num_started += 1
        self._copy_stage(key)

    def _copy_stage(self, key: int) -> None:
        """Copy what the request computed since the last stage, while it keeps decoding."""
        m = self._active[key]
        num_tokens = m.src.computed_tokens_now(m.request_id)
        m.num_stages += 1
        self._send(key, m.src, num_tokens - m.num_copied_tokens)
        m.num_copied_tokens = num_tokens

    def _send(self, key: int, src: SimReplica, num_tokens: int) -> None:
        transfer_s = src.executor.cost_model.kv_transfer_time_s(num_tokens, self.kv_link_bytes_s)
        self.ops.set_timer(self.ops.clock.now() + transfer_s, MIGRATION_STAGE_TIMER, key)

    def on_timer(self, key: int) -> None:
        """A copy ended: copy again, stop and copy the rest, or resume on the destination."""
        m = self._active[key]
        if m.moved is not None:
            self.ops.at_boundary(m.dst, lambda: self._resume(key))
            return
        if not self._still_running(m) or not self._dst_fits(m):
            self._abort(key)
            return
        num_left = m.src.computed_tokens_now(m.request_id) - m.num_copied_tokens
        bs = m.src.scheduler.config.block_size
        if -(-num_left // bs) <= self.config.last_stage_max_blocks or m.num_stages >= self.config.max_stages:
            self.ops.at_boundary(m.src, lambda: self._stop_and_copy(key))
        else:
            self._copy_stage(key)

    @staticmethod
    def _still_running(m: _Migration) -> bool:
        request = m.src.scheduler.requests.get(m.request_id)
        return request is not None and request.status == RequestStatus.RUNNING

    @staticmethod
    def _dst_fits(m: _Migration) -> bool:
        """Llumnix's handshake before each stage: the destination reserves the blocks the
        stage brings; if it cannot (it filled up since the migration began), the migration is
        abandoned and the request goes on at the source, never recomputed at the
        destination."""
        return _fits(m.dst, m.src.scheduler.requests[m.request_id])

    def _stop_and_copy(self, key: int) -> None:
        """At the source's step boundary: leave its batch, send the last tokens."""
        m = self._active[key]
        if not self._still_running(m) or not self._dst_fits(m):  # finished, preempted, or
            self._abort(key)                                        # no room left at the
            return                                                  # destination
        m.moved = m.src.detach(m.request_id)
        self._send(key, m.src, m.moved.request.num_computed_tokens - m.num_copied_tokens)

    def _resume(self, key: int) -> None:
        """At the destination's step boundary: join its batch with the copied KV."""
        m = self._active.pop(key)
        assert m.moved is not None
        if m.dst.attach(m.moved):
            self.num_completed += 1
        else:
            m.dst.requeue(m.moved)
            self.num_requeued += 1
        self.downtime_s.append(self.ops.clock.now() - m.moved.detached_s)

    def _abort(self, key: int) -> None:
        del self._active[key]
        self.num_aborted += 1
