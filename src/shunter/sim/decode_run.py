"""Steady decode runs: many identical scheduling steps decided and applied at once.

After a step that schedules every running request for exactly one decode token and admits,
preempts and swaps nothing, the next steps decide the same thing until something changes: a
request stops or hits a length limit, the KV cache cannot give a growing request its next
block, or a new request arrives. In between, no decision can change:

- admission stays blocked: free blocks only shrink and the running count is constant, and a
  policy with a static order keeps the same waiting head. A policy without one may change its
  waiting head, `should_preempt` and victim keys (which order the running requests' block
  allocations and frees each step) as service is charged: its runs are capped at the core's
  `CoreScheduler.steps_until_reorder` (the policy's declared bound, `ReorderBoundPolicy`;
  none without one, and from an applied state only if it charges when a step is scheduled);
- priority preemption stays off: for static orders `should_preempt` does not depend on time,
  and every running request has already progressed (so the candidates are the same); runs are
  only taken when the waiting head has no `CoreScheduler.priority_victim`, since whether the
  head fits (what phase 0 checks first) can change as free blocks shrink;
- memory-pressure preemption cannot happen while the planned blocks fit.

`decode_run_horizon` says how many such steps follow a just-scheduled step; `advance_decode_run`
applies them exactly as that many `schedule`/`update` rounds would: block allocations and prefix
cache publications happen in the same (step, running order) sequence, so block ids, LRU order
and cache contents end up identical. Only the simulator uses this; the engine runs every step.
It reads the core scheduler's public state and the two hooks above, nothing undeclared.

`begin_steady_run` starts a run with no real first step, from a state whose last step was
applied, when the very next step is already steady: every running request has progressed and
is one token behind, and nothing waits, or what waits cannot be admitted (every seat is taken)
and may not displace a running request. Then `schedule` would only sort the running list and
give each request one token (which it does: the sort, here), so the whole run is bulk.
"""

from __future__ import annotations

import sys
from typing import Final

from shunter.core.request import Request
from shunter.core.sched.interface import RequestOutput, SchedulerOutput
from shunter.core.sched.limits import stop_status
from shunter.core.sched.scheduler import CoreScheduler
from shunter.core.types import FINISHED_STATUSES

__all__ = ["advance_decode_run", "begin_steady_run", "blocks_for_steps", "decode_run_horizon"]

# a publish limit of every block (a module attribute read is a dict lookup; a Final a C static)
_ALL_BLOCKS: Final = sys.maxsize


def decode_run_horizon(scheduler: CoreScheduler, output: SchedulerOutput, max_steps: int) -> int:
    """How many steps after `output` (scheduled, not yet applied) are steady decodes; 0 if none.

    `max_steps` is the caller's own bound (the simulator passes the steps until its first stop).
    """
    running = scheduler.running
    n = len(running)
    if (max_steps <= 0 or n == 0 or len(output.chunks) != n or output.new_requests
            or output.preempted_ids or output.swap_in or output.swap_out or output.offload):
        return 0
    if output.shape.num_decode_requests != n:
        return 0
    if scheduler.kv.contiguous:
        return 0  # block ids depend on who allocates when; the bulk path allocates in LRU order
    # the first step is scheduled, not applied: a policy that charges when a step is scheduled
    # may already have reordered since its decisions (e.g. another waiting head that would
    # fit), and the others are certain of one step fewer than from the applied state
    horizon = min(max_steps, scheduler.steps_until_reorder(is_applied=False))
    if horizon <= 0:
        return 0
    if _may_preempt_for_head(scheduler):
        return 0  # phase 0 fires as soon as shrinking free memory stops the head from fitting
    max_seq_len = scheduler.max_seq_len
    for r in running:
        if not r.has_progressed or r.token_ids is not None:
            return 0
        # after the scheduled step the request has num_output+1 outputs and num_tokens+1 tokens
        if r.max_output_tokens is not None:
            horizon = min(horizon, r.max_output_tokens - r.num_output_tokens - 1)
        horizon = min(horizon, max_seq_len - r.num_tokens - 1)
    if horizon <= 0:
        return 0
    return _memory_horizon(scheduler, horizon)


def begin_steady_run(scheduler: CoreScheduler, max_steps: int) -> int:
    """Start a steady run from an applied state (see the module docstring): returns its number
    of steps, 0 if the next step must be scheduled for real. With a run, the running list is
    sorted by victim key now, as that step's `schedule` would; apply it with
    `advance_decode_run` (whose steps are then all of the run's)."""
    running = scheduler.running
    n = len(running)
    cfg = scheduler.config
    if (max_steps <= 0 or n == 0 or n > cfg.max_num_batched_tokens or scheduler.kv.contiguous
            or scheduler.has_pending_copies):
        return 0  # (contiguous: see decode_run_horizon)
    horizon = min(max_steps, scheduler.steps_until_reorder())
    if horizon <= 0:
        return 0
    # a waiting request stays out while every seat is taken (the running count is constant
    # over a run) and the policy does not let it displace a running one (constant as well)
    if len(scheduler.waiting) and (n < cfg.max_num_seqs or _may_preempt_for_head(scheduler)):
        return 0
    max_seq_len = scheduler.max_seq_len
    for r in running:
        num_tokens = r.num_prompt_tokens + r.num_output_tokens  # r.num_tokens, inlined (hot)
        if (not r.has_progressed or r.token_ids is not None
                or num_tokens - r.num_computed_tokens != 1):
            return 0
        if r.max_output_tokens is not None and r.max_output_tokens - r.num_output_tokens < horizon:
            horizon = r.max_output_tokens - r.num_output_tokens
        if max_seq_len - num_tokens < horizon:
            horizon = max_seq_len - num_tokens
    if horizon <= 0:
        return 0
    horizon = _memory_horizon(scheduler, horizon, is_applied=True)
    if horizon:
        running.sort(key=scheduler.victim_key(scheduler.clock.now()))
    return horizon


def _may_preempt_for_head(scheduler: CoreScheduler) -> bool:
    """Whether the policy lets the waiting head displace the worst preemptible running request
    (constant over a run for static orders; only whether the head fits changes)."""
    if scheduler.never_preempts:
        return False
    top = scheduler.waiting.peek()
    return top is not None and scheduler.priority_victim(top, scheduler.clock.now()) is not None


def blocks_for_steps(scheduler: CoreScheduler, num_steps: int, *, is_applied: bool = False) -> int:
    """New blocks the running requests take over the first `num_steps` steps after the one
    just scheduled (before that step is applied), or, with `is_applied`, after the last step
    (applied, nothing scheduled since: `begin_steady_run`)."""
    bs = scheduler.config.block_size
    # a request with c computed tokens holds cdiv(c + 1) blocks for the scheduled step (cdiv(c)
    # once applied); the s-th step after it needs cdiv(c + 1 + s) (cdiv(c + s))
    ahead = (0 if is_applied else 1) + num_steps
    # -(-a // b) is cdiv(a, b), inlined: this runs once per planned run over every request
    total = 0
    for r in scheduler.running:
        c = r.num_computed_tokens + ahead
        total += -(-c // bs) + ((num_steps - c) // bs)
    return total


def _memory_horizon(scheduler: CoreScheduler, horizon: int, *, is_applied: bool = False) -> int:
    """The most steps (<= horizon) whose new blocks all fit in the free pool."""
    free = scheduler.kv.num_free_blocks
    # h steps take each request at most cdiv(h) <= h // bs + 1 new blocks: the common case,
    # plenty of free blocks, needs no per-request sum
    if len(scheduler.running) * (horizon // scheduler.config.block_size + 1) <= free:
        return horizon
    if blocks_for_steps(scheduler, horizon, is_applied=is_applied) <= free:
        return horizon
    lo, hi = 0, horizon  # fits(lo) holds, fits(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if blocks_for_steps(scheduler, mid, is_applied=is_applied) <= free:
            lo = mid
        else:
            hi = mid
    return lo


def advance_decode_run(scheduler: CoreScheduler, num_steps: int,
                       stopped: frozenset[str]) -> list[RequestOutput]:
    """Apply `num_steps` steady decode steps (each a `schedule` plus an `update`) at once.

    Call after `update` of the run's first step. `stopped` are requests the executor ended at
    the last of these steps. Returns the outputs of requests that finished at that step; every
    other running request simply gained `num_steps` tokens.
    """
    pool = scheduler.kv.pool
    bs = scheduler.config.block_size
    running = list(scheduler.running)
    if scheduler.charges_service:
        # charged as `schedule` charges: before the tokens count as computed
        scheduler.charge_step([(r, num_steps) for r in running], scheduler.clock.now())
    # after step s, c+s tokens are computed: block (c+s)/bs - 1 is full when bs divides c+s,
    # and published then if below the request's publish limit: steps up to last_publish[i]
    last_publish = ([_last_publish_step(r, num_steps, bs) for r in running]
                    if pool.enable_caching else [])
    if not any(last_publish):  # nothing to publish (no cache, or only private blocks filling):
        _allocate_run_blocks(scheduler, running, num_steps)  # allocations are the only events
        return _finish_run(scheduler, running, num_steps, stopped, appended=False)
    # (step, 0 = allocate before it / 1 = publish after it, running index): the order in which
    # step-by-step scheduling would have done them
    events: list[tuple[int, int, int]] = []
    for index, r in enumerate(running):
        c = r.num_computed_tokens
        # step s computes token c+s-1 (0-based) and needs a new block when c+s-1 starts one
        events.extend((s, 0, index) for s in range((1 - c) % bs or bs, num_steps + 1, bs))
        events.extend((s, 1, index) for s in range((-c) % bs or bs, last_publish[index] + 1, bs))
        r.append_outputs(num_steps)
    events.sort()
    for step, kind, index in events:
        r = running[index]
        if kind == 0:
            assert pool.can_allocate(1), "decode run planned past the free blocks"
            r.block_ids.extend(pool.allocate(1))
        else:
            block = (r.num_computed_tokens + step) // bs - 1
            pool.cache(r.block_ids[block], r.block_hashes[block])
    return _finish_run(scheduler, running, num_steps, stopped)


def _last_publish_step(r: Request, num_steps: int, bs: int) -> int:
    """The last of the run's steps after which `r` publishes a block (0: none)."""
    if r.publish_limit == _ALL_BLOCKS:
        return num_steps
    # block b fills after step (b + 1) * bs - c; blocks below the limit are published
    return max(min(num_steps, r.publish_limit * bs - r.num_computed_tokens), 0)


def _allocate_run_blocks(scheduler: CoreScheduler, running: list[Request], num_steps: int) -> None:
    """The run's block allocations in (step, running index) order, from one bulk `allocate`.

    Request i needs a block at steps f_i, f_i + bs, f_i + 2 bs, ... with 1 <= f_i <= bs, so
    round k (steps in (k bs, (k + 1) bs]) serves, in (f_i, i) order, the requests with
    f_i + k bs <= num_steps: a prefix of that order. The pool hands out the same ids in the
    same order as one `allocate(1)` per event would, since nothing else touches it meanwhile;
    they are dealt to the requests by strided slices of that order.
    """
    bs = scheduler.config.block_size
    num_running = len(running)
    order = []  # (f_i, i) as the int f_i * num_running + i: ints sort faster than tuples
    total = 0
    for index, r in enumerate(running):
        first = (1 - r.num_computed_tokens) % bs or bs
        if first <= num_steps:
            order.append(first * num_running + index)
            total += 1 + (num_steps - first) // bs
    if not total:
        return
    pool = scheduler.kv.pool
    assert pool.can_allocate(total), "decode run planned past the free blocks"
    ids = pool.allocate(total)
    order.sort()
    # every request gets `full` or `full + 1` blocks (the f_i span less than bs): rounds
    # 0..full-1 serve all n, round `full` the prefix that gets one more; so request p's ids
    # are every n-th from p, then one from the last round
    n = len(order)
    full = 1 + (num_steps - order[-1] // num_running) // bs
    end = n * full
    num_extra = total - end
    for p, key in enumerate(order):
        table = running[key % num_running].block_ids
        table.extend(ids[p:end:n])
        if p < num_extra:
            table.append(ids[end + p])


def _finish_run(scheduler: CoreScheduler, running: list[Request], num_steps: int,
                stopped: frozenset[str], *, appended: bool = True) -> list[RequestOutput]:
    """Count the run's tokens as computed (and, unless `appended`, as sampled: requests without
    block hashes to extend) and end the requests that stop at its last step."""
    outputs: list[RequestOutput] = []
    max_seq_len = scheduler.max_seq_len
    bs = scheduler.config.block_size
    for r in running:
        if not appended:
            if r.hasher is None:  # Request.append_outputs, inlined (hot loop)
                r.num_output_tokens += num_steps
            else:
                r.append_outputs(num_steps)
        computed = r.num_computed_tokens + num_steps
        r.num_computed_tokens = computed
        r.num_published_blocks = min(computed // bs, r.publish_limit)
        # stop_status's conditions, checked inline first: most requests go on (hot loop)
        if (r.request_id not in stopped and r.num_prompt_tokens + r.num_output_tokens < max_seq_len
                and (r.max_output_tokens is None or r.num_output_tokens < r.max_output_tokens)):
            continue
        status = stop_status(r, stopped, max_seq_len)
        if status is not None:
            scheduler.running.remove(r)
            scheduler.finish_request(r, status)
            outputs.append(RequestOutput(r.request_id, (), FINISHED_STATUSES[status],
                                         num_cached_tokens=r.num_cached_tokens or 0))
    scheduler.num_steps += num_steps
    return outputs
