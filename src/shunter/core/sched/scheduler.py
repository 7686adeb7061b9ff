"""The engine-level scheduler: one step's batch, decided the same way in sim and engine.

Model (as in vLLM v1): there is no prefill or decode phase. A request has `num_tokens` and
`num_computed_tokens`; a step gives it some tokens of a shared budget. Each step:

0. the policy's own recalls, if it makes any (`RecallingPolicy`: length-grouped FCR); then
   priority preemption: while the best waiting request cannot fit and the policy lets it
   displace the worst preemptible running one, preempt that one;
1. running requests, in policy order, each get their uncomputed tokens (1 for a decode, a
   chunk for a prompt in progress); one that cannot get a KV block preempts the worst running
   request not yet scheduled, possibly itself. No preemption storms: a request preempted before
   is not preempted again until it has sampled a new token (`Request.is_preemptible`); when
   only such requests are left, the one asking waits a step instead (it keeps its blocks),
   unless nothing was scheduled, when the worst must still yield;
2. waiting requests, in policy order, are admitted while they fit (prefix-cache hits first,
   then the rest chunked into the leftover budget) — but not in a step where memory ran short
   in (1), so that a preempted request is not overtaken by new ones;
3. a SchedulerOutput (read-only by contract) is emitted; `update` applies the StepResult when it
   comes back, then ends what the policy stops early from the step's probes (`early_stop`).

With chunked prefill off (prefill-first, vLLM v0 / Orca), phase 2 runs before phase 1 and a
step that admits any prompt runs only whole prompts: decodes stall behind prefills.

Several batches in flight (pipeline parallelism, vLLM v1's batch queue of `pp` batches): the
caller lists the requests of batches scheduled but not yet `update`d in `in_flight_ids`; a step
neither schedules, recalls nor preempts them (they keep their blocks and count against
`max_num_seqs`) until their batch's update. Empty (the default), it changes nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

from shunter.core.clock import Clock
from shunter.core.kv.manager import KVCacheManager
from shunter.core.request import Request
from shunter.core.sched.config import SchedulerConfig
from shunter.core.sched.early_stop import stop_early
from shunter.core.sched.headroom import Headroom
from shunter.core.sched.interface import RequestOutput, SchedulerOutput, StepResult
from shunter.core.sched.limits import rejection_reason, stop_status
from shunter.core.sched.lora import LoraSlots
from shunter.core.sched.plan import StepPlan
from shunter.core.sched.policy import (
    Policy,
    PrefixAwarePolicy,
    RecallingPolicy,
    ReorderBoundPolicy,
    charges_service,
    never_preempts,
    static_victim_key,
    step_charger,
    victim_sort_key,
)
from shunter.core.sched.speculative import accept_drafts, num_draft_slots
from shunter.core.sched.stats import SchedulerStats
from shunter.core.types import FINISHED_STATUSES, RequestId, RequestStatus

__all__ = ["CoreScheduler", "SchedulerConfig"]

# a finished conversation turn whose KV the next turn may reuse (host KV reuse)
_OFFLOADED_STATUSES = (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH)
# the statuses the hot paths test, read once: on Python 3.11 `RequestStatus.RUNNING` goes
# through EnumType.__getattr__'s slot (about 900 instructions; a compiled Final is a C static)
_RUNNING: Final = RequestStatus.RUNNING
_SWAPPED: Final = RequestStatus.SWAPPED


class CoreScheduler:
    def __init__(self, config: SchedulerConfig, policy: Policy, clock: Clock) -> None:
        self.config = config
        self.max_seq_len = config.max_seq_len  # (a derived property: cached for the hot paths)
        self.policy = policy
        self.charges_service = charges_service(policy)  # (cached: checked every step)
        self.charge_step = step_charger(policy)
        self.never_preempts = never_preempts(policy)
        self._static_victim_key = static_victim_key(policy)  # (cached: the running list is
        # sorted by it every step)
        self._reorder_bound = (policy.steps_until_reorder
                               if isinstance(policy, ReorderBoundPolicy) else None)
        self._recalls = policy.recalls if isinstance(policy, RecallingPolicy) else None
        self.clock = clock
        self.kv = KVCacheManager(config.num_blocks, config.block_size,
                                 enable_caching=config.enable_prefix_caching,
                                 num_host_blocks=config.num_host_blocks,
                                 contiguous=config.kv_allocation == "contiguous",
                                 host_reuse=config.host_kv_reuse)
        self.waiting = (policy.make_prefix_queue(self.num_cached_prefix_tokens)
                        if isinstance(policy, PrefixAwarePolicy) else policy.make_queue())
        self.running: list[Request] = []
        self.requests: dict[RequestId, Request] = {}
        self.num_preemptions = 0
        self.num_waiting_tokens = 0
        self.num_steps = 0
        self.num_spec_tokens = 0  # speculative decoding's drafts per decode (`enable_speculation`)
        self._finished_ids: list[RequestId] = []
        self._offloads: list[tuple[int, int]] = []  # finished turns' KV to copy to host next step
        self.headroom = Headroom(config, self.kv)
        self.in_flight_ids: set[RequestId] = set()  # see the module docstring
        self.lora = LoraSlots(config.max_loras, self.waiting) if config.max_loras else None

    # ---- requests in and out -------------------------------------------------------------

    @property
    def has_work(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0

    def rejection_reason(self, request: Request) -> str | None:
        """Why a request can never run here, or None if it can."""
        return rejection_reason(self.config, request)

    def add_request(self, request: Request) -> RequestOutput | None:
        if request.request_id in self.requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        reason = self.rejection_reason(request)
        if reason is not None:
            request.set_status(RequestStatus.FINISHED_REJECTED)
            self.policy.on_finished(request, self.clock.now())
            return RequestOutput(request.request_id, (), FINISHED_STATUSES[request.status],
                                 error=reason)
        self.requests[request.request_id] = request
        self._enqueue(request)
        return None

    def abort(self, request_id: RequestId, status: RequestStatus = RequestStatus.FINISHED_ABORTED,
              ) -> RequestOutput | None:
        request = self.requests.get(request_id)
        if request is None:
            return None
        if request.status == _RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
            self.num_waiting_tokens -= request.num_uncomputed_tokens
        self.finish_request(request, status)
        return RequestOutput(request_id, (), FINISHED_STATUSES[request.status],
                             num_cached_tokens=request.num_cached_tokens or 0)

    @property
    def has_pending_copies(self) -> bool:
        """Finished turns' KV waits to be copied to host memory at the next step."""
        return bool(self._offloads)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            num_waiting=len(self.waiting), num_running=len(self.running),
            num_waiting_tokens=self.num_waiting_tokens,
            num_running_tokens=sum(r.num_tokens for r in self.running),
            num_free_blocks=self.kv.num_free_blocks, num_total_blocks=self.config.num_blocks,
            num_preemptions=self.num_preemptions)

    def victim_key(self, now: float) -> Callable[[Request], Any]:
        """The key that sorts the running list worst victim last (`victim_sort_key`)."""
        return self._static_victim_key or victim_sort_key(self.policy, now)

    # ---- one step ------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        now = self.clock.now()
        self.num_steps += 1
        plan = StepPlan(budget=self.config.max_num_batched_tokens)
        if self._offloads:  # copied before this step's forward pass reuses those blocks
            plan.offload.extend(self._offloads)
            self._offloads = []
        if self._recalls is not None:  # the policy's own preemptions (RecallingPolicy)
            in_flight = self.in_flight_ids
            for request in self._recalls([r for r in self.running if r.request_id not in in_flight]
                                         if in_flight else self.running):
                self._preempt(request, plan)
        self._preempt_for_priority(plan, now)
        if self.config.enable_chunked_prefill:
            if not self._schedule_running(plan, now):
                self._schedule_waiting(plan, now)
        elif not self._schedule_waiting(plan, now):
            self._schedule_running(plan, now)
        if self.charges_service:
            self.charge_step(plan.scheduled, now)
        finished, self._finished_ids = tuple(self._finished_ids), []
        return plan.build(self.num_steps, finished, self.config.emit_block_tables)

    def _schedule_running(self, plan: StepPlan, now: float) -> bool:
        """Phase 1. Returns whether memory ran short (a request was preempted or had to wait)."""
        running = self.running
        running.sort(key=self.victim_key(now))
        chunked = self.config.enable_chunked_prefill
        in_flight = self.in_flight_ids
        is_short = False
        i = 0
        while i < len(running) and plan.budget > 0:
            request = running[i]
            if in_flight and request.request_id in in_flight:
                i += 1
                continue
            num_new = request.num_uncomputed_tokens
            if self.num_spec_tokens and num_new == 1 and request.num_output_tokens:
                num_new += num_draft_slots(request, self.num_spec_tokens, self.max_seq_len,
                                           plan.budget)
            if not chunked and num_new > plan.budget and plan.scheduled:
                i += 1
                continue
            num_new = min(num_new, plan.budget)
            is_allocated = self.kv.allocate_slots(request, num_new)
            while not is_allocated:
                is_short = True
                victim = self._memory_victim(running, i, in_flight)
                if victim is None and plan.scheduled:
                    break  # all left were preempted and have not progressed: this one waits
                # nothing else would run: someone must yield
                victim = victim or next(r for r in reversed(running)
                                        if r.request_id not in in_flight)
                self._preempt(victim, plan)
                if victim is request:
                    break
                is_allocated = self.kv.allocate_slots(request, num_new)
            if is_allocated:
                plan.add(request, num_new)
            if is_allocated or request.status == _RUNNING:
                i += 1
        return is_short

    @staticmethod
    def _memory_victim(running: list[Request], first: int,
                       in_flight: set[RequestId]) -> Request | None:
        """The worst of `running[first:]` (not scheduled yet; sorted by victim key) that may be
        preempted again (`Request.is_preemptible`) and is not in flight, or None if none may."""
        for j in range(len(running) - 1, first - 1, -1):
            if running[j].is_preemptible and running[j].request_id not in in_flight:
                return running[j]
        return None

    def _schedule_waiting(self, plan: StepPlan, now: float) -> bool:
        """Phase 2. Returns whether any request was admitted."""
        cfg = self.config
        admitted = False
        reserved = self.headroom.reserved_blocks(self.running)
        if (lora := self.lora) is not None:
            lora.begin(self.running)
        while plan.budget > 0 and len(self.running) < cfg.max_num_seqs:
            request = self.waiting.peek() if lora is None else lora.next_waiting(
                self.waiting, cfg.max_num_seqs)  # (vLLM's max_loras: core.sched.lora)
            if request is None:
                break
            num_queued = request.num_uncomputed_tokens
            reserve = self.headroom.reserve_for(request, reserved, len(self.running))
            if request.status == _SWAPPED:
                # swapped out mid-prompt, it may need more than one new block for its next chunk
                num_new = min(request.num_uncomputed_tokens, plan.budget)
                num_held = len(request.host_block_ids or ())
                need = self.kv.num_blocks_for(request.num_computed_tokens + num_new) - num_held
                if not self.kv.can_swap_in(request, reserve + max(need, 1)):
                    break
                plan.swap_in.extend(self.kv.swap_in(request))
                ok = self.kv.allocate_slots(request, num_new)
                assert ok, "swap-in reserved the blocks of the request's next chunk"
            else:
                hits = self.kv.computed_blocks(request) if request.num_computed_tokens == 0 else []
                host_hits = (self.kv.host_prefix(request, len(hits))
                             if request.num_computed_tokens == 0 else [])
                num_new = (request.num_uncomputed_tokens
                           - (len(hits) + len(host_hits)) * cfg.block_size)
                if not cfg.enable_chunked_prefill and num_new > plan.budget and plan.scheduled:
                    break  # prefill-first runs whole prompts; only a lone oversized one is chunked
                num_new = min(num_new, plan.budget)
                if not self.kv.allocate_slots(request, num_new, hit_blocks=hits,
                                              reserve_blocks=reserve, host_hits=host_hits,
                                              copies=plan.swap_in):
                    break
                if request.num_cached_tokens is None:
                    request.num_cached_tokens = (len(hits) + len(host_hits)) * cfg.block_size
                plan.add_new_request(request)
            self.waiting.pop()
            self.num_waiting_tokens -= num_queued
            request.status = _RUNNING
            request.has_progressed = False
            if request.first_scheduled_s is None:
                request.first_scheduled_s = now
            self.running.append(request)
            reserved += self.headroom.whole_reservation(request)
            plan.add(request, num_new)
            admitted = True
        if lora is not None:
            lora.end()
        return admitted

    def _preempt_for_priority(self, plan: StepPlan, now: float) -> None:
        """Phase 0: let a better waiting request displace worse running ones, if the policy says so."""
        top = self.waiting.peek()  # (first: a queue may settle its state at each decision)
        if self.never_preempts:
            return
        while top is not None and self.running and not self.headroom.fits(top, len(self.running)):
            victim = self.priority_victim(top, now)
            if victim is None:
                return
            self._preempt(victim, plan)

    def priority_victim(self, waiting: Request, now_s: float) -> Request | None:
        """The running request `waiting` may displace now: the worst preemptible one, if the
        policy lets it (phase 0, and the simulator's check that a decode run keeps it off)."""
        in_flight = self.in_flight_ids
        candidates = [r for r in self.running
                      if r.is_preemptible and r.request_id not in in_flight]
        if not candidates:
            return None
        victim = max(candidates, key=lambda r: self.policy.victim_key(r, now_s))  # type: ignore[arg-type,return-value]
        return victim if self.policy.should_preempt(waiting, victim, now_s) else None

    def enable_speculation(self, num_spec_tokens: int) -> None:
        """Let each decode verify up to `num_spec_tokens` drafts (`core.sched.speculative`)."""
        assert num_spec_tokens >= 1 and not self.requests, "enable before any request"
        self.num_spec_tokens = num_spec_tokens

    def steps_until_reorder(self, *, is_applied: bool = True) -> int:
        """Steps, each giving every running request one decode token, over which the policy
        decides as it does now, counted after the last applied step or (not `is_applied`) after
        the step just scheduled; 0 if it cannot say. Bounds the simulator's bulk decode runs."""
        scheduled = 0 if is_applied else 1  # the policy's bound counts from the applied state
        if self.policy.has_static_order:
            return sys.maxsize - scheduled
        if self._reorder_bound is None or (scheduled and self.charges_service):
            return 0  # (charged when scheduled, it may have reordered since that step's decisions)
        return max(self._reorder_bound(self.running) - scheduled, 0)

    # ---- helpers -------------------------------------------------------------------------

    def num_cached_prefix_tokens(self, request: Request) -> int:
        """Tokens a waiting request would not compute if admitted now (prefix-aware policies'
        probe): its prefix-cache hits, or all it computed before a swap-out (copied back)."""
        if request.status == _SWAPPED:
            return request.num_computed_tokens
        return len(self.kv.computed_blocks(request)) * self.config.block_size

    def _enqueue(self, request: Request) -> None:
        self.waiting.add(request)
        self.num_waiting_tokens += request.num_uncomputed_tokens

    def _preempt(self, request: Request, plan: StepPlan) -> None:
        self.running.remove(request)
        request.num_preemptions += 1
        self.num_preemptions += 1
        request.has_progressed = False
        if self.config.preemption_mode == "swap" and self.kv.can_swap_out(request):
            plan.swap_out.extend(self.kv.swap_out(request))
            request.status = _SWAPPED
        else:
            self.kv.free(request, alive=True)
            request.num_computed_tokens = 0
            request.status = RequestStatus.PREEMPTED
            plan.preempted_ids.append(request.request_id)
        self._enqueue(request)

    def finish_request(self, request: Request, status: RequestStatus) -> None:
        """End a request that is no longer in the running list or the waiting queue."""
        if status in _OFFLOADED_STATUSES and (request.session_id is not None
                                              or self.config.host_kv_offload == "all"):
            self._offloads.extend(self.kv.offload(request))  # no-op without host reuse
        self.kv.free(request)
        self.kv.free_host(request)
        request.set_status(status)
        self.policy.on_finished(request, self.clock.now())
        del self.requests[request.request_id]
        self._finished_ids.append(request.request_id)

    # ---- results -------------------------------------------------------------------------

    def update(self, output: SchedulerOutput, result: StepResult) -> Sequence[RequestOutput]:
        outputs: list[RequestOutput] = []
        max_seq_len = self.max_seq_len
        for chunk in output.chunks:
            request = self.requests.get(chunk.request_id)
            if request is None or request.status != _RUNNING:
                continue  # aborted while the step ran
            request.num_computed_tokens += chunk.num_scheduled_tokens
            if not chunk.is_sampling:
                if request.block_hashes:  # (without hashes there is nothing to publish)
                    self.kv.publish(request)
                continue
            request.has_progressed = True  # a new token: recomputing old ones is no progress
            drafts = output.num_draft_tokens
            if drafts and chunk.request_id in drafts:  # speculative decoding's verified drafts
                new_ids, status = accept_drafts(request, drafts[chunk.request_id], result,
                                                max_seq_len)
            else:
                new_ids = (result.sampled[chunk.request_id],)
                request.append_output(new_ids[0])
                status = stop_status(request, result.stopped, max_seq_len)
            if request.block_hashes:
                self.kv.publish(request)
            if status is not None:
                self.running.remove(request)
                self.finish_request(request, status)
            reason = FINISHED_STATUSES[status] if status is not None else None
            outputs.append(RequestOutput(request.request_id, new_ids, reason,
                                         num_cached_tokens=request.num_cached_tokens or 0))
        if result.probes:  # (only an executor probing for an EarlyStoppingPolicy reports them)
            stop_early(self, result.probes, outputs)
        return outputs
