"""Requests moving between schedulers (live migration, prefill/decode handoff): a running
request detached from one `CoreScheduler` with its tokens and counters, attached to another
with fresh blocks for its KV (which the caller copies), or requeued there to recompute it."""

from __future__ import annotations

from shunter.core.request import Request
from shunter.core.sched.scheduler import CoreScheduler
from shunter.core.types import RequestId, RequestStatus

__all__ = ["attach", "can_attach", "detach", "requeue"]


def detach(scheduler: CoreScheduler, request_id: RequestId) -> Request:
    """Take a running request out to continue elsewhere: its tokens, computed count and
    counters travel with it; its blocks are freed here (full ones stay in the prefix
    cache). Call between steps only (not while a scheduled step is in flight)."""
    request = scheduler.requests.get(request_id)
    if request is None or request.status != RequestStatus.RUNNING:
        raise ValueError(f"request {request_id!r} is not running here")
    scheduler.running.remove(request)
    del scheduler.requests[request_id]
    scheduler.kv.free(request, alive=True)
    scheduler.policy.on_finished(request, scheduler.clock.now())
    return request


def can_attach(scheduler: CoreScheduler, request: Request) -> bool:
    """Whether `attach` would take this detached request now."""
    need = scheduler.kv.num_blocks_for(request.num_computed_tokens)
    return (len(scheduler.running) < scheduler.config.max_num_seqs
            and request.num_tokens < scheduler.config.max_seq_len
            and need + scheduler.headroom.watermark_blocks <= scheduler.kv.num_free_blocks
            and (scheduler.lora is None or scheduler.lora.can_join(request, scheduler.running)))


def attach(scheduler: CoreScheduler, request: Request) -> bool:
    """Insert a request detached elsewhere as running, with fresh blocks for the KV of its
    `num_computed_tokens` (the caller copied it in); full blocks enter the prefix cache.
    Returns False, changing nothing, if the blocks or a batch slot are missing."""
    if request.request_id in scheduler.requests:
        raise ValueError(f"duplicate request id {request.request_id!r}")
    assert not request.block_ids and request.status == RequestStatus.RUNNING, \
        f"{request.request_id} was not detached"
    if not can_attach(scheduler, request):
        return False
    kv = scheduler.kv
    request.block_ids = kv.pool.allocate(kv.num_blocks_for(request.num_computed_tokens))
    request.num_published_blocks = 0
    kv.publish(request)
    scheduler.requests[request.request_id] = request
    scheduler.running.append(request)
    return True


def requeue(scheduler: CoreScheduler, request: Request) -> None:
    """Queue a detached request whose KV could not be brought here: it recomputes its
    prompt and outputs (a recompute preemption; no token is lost or repeated)."""
    if request.request_id in scheduler.requests:
        raise ValueError(f"duplicate request id {request.request_id!r}")
    assert not request.block_ids, f"{request.request_id} was not detached"
    request.num_computed_tokens = 0
    request.num_preemptions += 1
    scheduler.num_preemptions += 1
    request.has_progressed = False
    request.status = RequestStatus.PREEMPTED
    scheduler.requests[request.request_id] = request
    scheduler._enqueue(request)  # (the scheduler's own queueing of a request)
