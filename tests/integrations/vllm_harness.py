"""Drives `ShunterScheduler` in-process with hand-written model outputs (vLLM's own scheduler
tests do the same): run by `test_vllm_scheduler.py` with the vLLM venv's python,
``python vllm_harness.py MODEL_DIR``; prints one JSON object of what each scenario saw.

No model runs: vLLM's config is built from the model directory's config.json only, the KV cache
is a made-up one, and every scheduled request that reaches its last known token "samples"
`_TOKEN`. Kept out of pytest's collection (it imports vLLM, which only that venv has).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
import vllm
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus
from vllm.v1.structured_output import StructuredOutputManager

import shunter.integrations.vllm as adapter
from shunter.core.sched.policy import EarlyStoppingPolicy, RecallingPolicy
from shunter.core.sched.registry import POLICIES, make_policy
from shunter.errors import ConfigError
from shunter.integrations.vllm import ShunterAsyncScheduler, ShunterScheduler

BLOCK_SIZE = 16
_TOKEN = 1000
_MODEL_DIR = sys.argv[1] if len(sys.argv) > 1 else ""

init_none_hash(sha256)
_HASHER = get_request_block_hasher(BLOCK_SIZE, sha256)


def make_scheduler(policy: str, params: str = "", *, max_num_seqs: int = 2,
                   num_blocks: int = 200, budget: int = 256,
                   async_scheduling: bool = False) -> ShunterScheduler:
    os.environ["SHUNTER_POLICY"] = policy
    os.environ["SHUNTER_POLICY_PARAMS"] = params
    model_config = ModelConfig(model=_MODEL_DIR, dtype="float32", seed=0, max_model_len=1024,
                               skip_tokenizer_init=True)
    scheduler_config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                                       max_model_len=1024, is_encoder_decoder=False,
                                       enable_chunked_prefill=True,
                                       async_scheduling=async_scheduling)
    cache_config = CacheConfig(block_size=BLOCK_SIZE, cache_dtype="auto",
                               enable_prefix_caching=True)
    vllm_config = VllmConfig(model_config=model_config, scheduler_config=scheduler_config,
                             cache_config=cache_config)
    scheduler_config.async_scheduling = async_scheduling  # (the CPU platform turns it off)
    cache_config.num_gpu_blocks = num_blocks
    kv_cache_config = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[
        KVCacheGroupSpec(["layer"], FullAttentionSpec(block_size=BLOCK_SIZE, num_kv_heads=1,
                                                      head_size=16, dtype=torch.float32))])
    return ShunterScheduler(vllm_config=vllm_config, kv_cache_config=kv_cache_config,
                            structured_output_manager=StructuredOutputManager(vllm_config),
                            block_size=BLOCK_SIZE, log_stats=False)


def make_request(request_id: str, *, num_prompt_tokens: int = 20, max_tokens: int = 4,
                 priority: int = 0, arrival_time: float, first_token: int = 200,
                 **xargs: Any) -> Request:
    prompt = [first_token + i for i in range(num_prompt_tokens)]  # distinct: no shared prefix
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, extra_args=xargs or None)
    return Request(request_id=request_id, prompt_token_ids=prompt, sampling_params=params,
                   pooling_params=None, arrival_time=arrival_time, priority=priority,
                   block_hasher=_HASHER)


def step(scheduler: ShunterScheduler) -> SchedulerOutput:
    """One schedule + update; each request whose chunk reaches its last token samples one."""
    output = scheduler.schedule()
    req_ids = list(output.num_scheduled_tokens)
    sampled = []
    for req_id in req_ids:
        request = scheduler.requests[req_id]
        reaches_end = request.num_computed_tokens >= request.num_tokens  # (already advanced)
        sampled.append([_TOKEN] if reaches_end else [])
    runner_output = ModelRunnerOutput(req_ids=req_ids,
                                      req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                      sampled_token_ids=sampled)
    scheduler.update_from_output(output, runner_output)
    return output


def run(scheduler: ShunterScheduler, max_steps: int = 500,
        on_step: Callable[[int, SchedulerOutput], None] | None = None) -> list[str]:
    """Steps until nothing is left; returns request ids in order of first admission."""
    admitted: list[str] = []
    for i in range(max_steps):
        if not scheduler.has_requests():
            break
        output = step(scheduler)
        admitted += [r.req_id for r in output.scheduled_new_reqs]
        if on_step is not None:
            on_step(i, output)
    return admitted


class CountingPolicy:
    """Wraps the scheduler's policy and counts `on_finished` per request id."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.finished: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def on_finished(self, request: Any, now_s: float) -> None:
        self.finished[request.request_id] = self.finished.get(request.request_id, 0) + 1
        self.inner.on_finished(request, now_s)


def two_tenants(policy: str, *, async_scheduling: bool = False) -> dict[str, Any]:
    """One seat; tenant a sends 4 requests, then tenant b 2: the order of admission."""
    scheduler = make_scheduler(policy, max_num_seqs=1, async_scheduling=async_scheduling)
    for i in range(4):
        scheduler.add_request(make_request(f"a{i}", arrival_time=1.0 + i, first_token=100 * i,
                                           tenant="a"))
    for i in range(2):
        scheduler.add_request(make_request(f"b{i}", arrival_time=10.0 + i,
                                           first_token=5000 + 100 * i, tenant="b"))
    order = run(scheduler)
    return {"class": type(scheduler).__name__, "order": order,
            "counters": dict(getattr(scheduler.shunter_policy, "counters", {}))}


def vtc_charges_once() -> dict[str, Any]:
    """Finish, abort a running and a waiting request: each is released once, charges add up."""
    scheduler = make_scheduler("vtc", max_num_seqs=2)
    counting = CountingPolicy(scheduler.shunter_policy)
    scheduler.shunter_policy = counting  # type: ignore[assignment]
    specs = [("done", "x", 20, 4), ("cut", "y", 30, 50), ("queued", "y", 40, 4),
             ("later", "x", 10, 3)]
    for i, (request_id, tenant, num_prompt, max_tokens) in enumerate(specs):
        scheduler.add_request(make_request(request_id, num_prompt_tokens=num_prompt,
                                           max_tokens=max_tokens, arrival_time=1.0 + i,
                                           first_token=1000 * (i + 1), tenant=tenant))

    def abort(i: int, _: SchedulerOutput) -> None:
        if i == 2:  # "cut" has run 2 steps (prompt + 1 decode), "queued" still waits
            scheduler.finish_requests(["cut", "queued"], RequestStatus.FINISHED_ABORTED)

    run(scheduler, on_step=abort)
    return {"finished": counting.finished, "counters": dict(counting.inner.counters),
            "meter_left": len(counting.inner.meter._charged), "mirrors_left": len(scheduler.mirrors),
            "waiting_left": len(scheduler.waiting)}


def skipped_head_is_not_charged() -> dict[str, Any]:
    """vLLM pops a request to skip it for a step (here: stale output still in flight): the policy
    must not count that as its admission."""
    scheduler = make_scheduler("vtc", max_num_seqs=2)
    head = make_request("head", arrival_time=1.0, tenant="x")
    scheduler.add_request(head)
    head.num_stale_output_tokens = 1  # vLLM skips it while this is set
    output = step(scheduler)
    skipped = {"scheduled": list(output.num_scheduled_tokens), "counter": scheduler.shunter_policy.counter("x"),
               "waiting": len(scheduler.waiting)}
    head.num_stale_output_tokens = 0
    output = step(scheduler)
    return {"skipped": skipped, "admitted": list(output.num_scheduled_tokens),
            "counter": scheduler.shunter_policy.counter("x")}


def plas_programs(policy: str) -> dict[str, Any]:
    """One seat: program "long" has had 100 tokens of service when its next call and a call of
    program "short" arrive (that order); PLAS serves the least-served program first."""
    scheduler = make_scheduler(policy, '{"first_level_service": 50}' if policy == "plas" else "",
                               max_num_seqs=1)
    scheduler.add_request(make_request("long-1", max_tokens=40, arrival_time=1.0,
                                       program_id="long"))
    run(scheduler)
    scheduler.add_request(make_request("long-2", arrival_time=5.0, first_token=3000,
                                       program_id="long"))
    scheduler.add_request(make_request("short-1", arrival_time=6.0, first_token=6000,
                                       program_id="short"))
    order = run(scheduler)
    inner = scheduler.shunter_policy
    return {"order": order, "service": dict(getattr(inner, "service", {})),
            "live_programs": len(getattr(inner, "_live", {})),
            "meter_left": len(inner.meter._charged) if hasattr(inner, "meter") else 0}


def priority_preempts() -> dict[str, Any]:
    """One seat: a high-priority arrival displaces the running low-priority request."""
    scheduler = make_scheduler("priority", max_num_seqs=1)
    low = make_request("low", priority=5, max_tokens=10, arrival_time=1.0)
    scheduler.add_request(low)
    events: list[list[str]] = []
    for _ in range(3):
        events.append(list(step(scheduler).num_scheduled_tokens))
    scheduler.add_request(make_request("high", priority=0, max_tokens=3, arrival_time=2.0,
                                       first_token=7000))
    output = step(scheduler)
    after = {"scheduled": list(output.num_scheduled_tokens),
             "preempted": sorted(output.preempted_req_ids), "low_status": low.status.name}
    order = run(scheduler)
    return {"before": events, "after": after, "readmitted": order,
            "low_outputs": len(low.output_token_ids), "num_preemptions": low.num_preemptions}


def fcfs_no_priority_preemption() -> dict[str, Any]:
    scheduler = make_scheduler("fcfs", max_num_seqs=1)
    scheduler.add_request(make_request("low", priority=5, max_tokens=10, arrival_time=1.0))
    step(scheduler)
    scheduler.add_request(make_request("high", priority=0, max_tokens=3, arrival_time=2.0,
                                       first_token=7000))
    return {"order": ["low", *run(scheduler)]}


def sarathi_budget() -> dict[str, Any]:
    """Step time = 2 ms + 0.1 ms per token (a fake clock): a 20 ms target allows 180 tokens,
    aligned down to 160."""
    scheduler = make_scheduler("sarathi", '{"tbt_slo_s": 0.02}', max_num_seqs=4, budget=512,
                               num_blocks=400)
    clock = {"now": 0.0}
    scheduler.perf_timer = lambda: clock["now"]

    original_schedule = scheduler.schedule

    def timed_schedule(*args: Any, **kwargs: Any) -> SchedulerOutput:
        output = original_schedule(*args, **kwargs)
        clock["now"] += 0.002 + 0.0001 * output.total_num_scheduled_tokens  # the "forward pass"
        return output

    scheduler.schedule = timed_schedule  # type: ignore[method-assign]
    for i in range(24):
        scheduler.add_request(make_request(f"r{i}", num_prompt_tokens=60 + 7 * i, max_tokens=6,
                                           arrival_time=1.0 + i, first_token=300 * i))
    budgets: list[int] = []
    run(scheduler, on_step=lambda i, o: budgets.append(scheduler.max_num_scheduled_tokens))
    return {"budget": scheduler.step_budget.budget, "coefficients": scheduler.step_budget.coefficients,
            "budgets_seen": sorted(set(budgets))}


def every_policy_runs() -> dict[str, Any]:
    """Each policy of the registry serves a small mixed load to the end (a KV cache small enough
    that memory-pressure preemption happens too): what each left behind."""
    left: dict[str, Any] = {}
    for name in sorted(POLICIES):
        if isinstance(make_policy(name), (RecallingPolicy, EarlyStoppingPolicy)):
            continue  # refused inside vLLM (integrations.settings)
        scheduler = make_scheduler(name, max_num_seqs=3, num_blocks=12, budget=64)
        for i in range(6):
            scheduler.add_request(make_request(
                f"r{i}", num_prompt_tokens=20 + 9 * i, max_tokens=12, priority=i % 2,
                arrival_time=1.0 + i, first_token=500 * i, tenant=f"t{i % 2}",
                program_id=f"p{i % 3}", predicted_output_tokens=10 * (6 - i)))
        finished: list[tuple[str, int, int]] = []  # (id, outputs, preemptions)
        original = scheduler._free_request

        def free(request: Request, *args: Any, _finished: list[Any] = finished,
                 _free: Any = original) -> Any:
            _finished.append((request.request_id, request.num_output_tokens,
                              request.num_preemptions))
            return _free(request, *args)

        scheduler._free_request = free  # type: ignore[method-assign]
        run(scheduler)
        left[name] = {"finished": sorted(r for r, _, _ in finished),
                      "outputs": sorted({n for _, n, _ in finished}),
                      "preemptions": sum(p for _, _, p in finished),
                      "mirrors": len(scheduler.mirrors), "waiting": len(scheduler.waiting),
                      "running": len(scheduler.running)}
    return left


def short_jobs_first(policy: str) -> dict[str, Any]:
    """One seat; a long request runs, then another long one and two short ones wait, each
    carrying its true length as the prediction (an oracle): the order of admission."""
    scheduler = make_scheduler(policy, max_num_seqs=1)
    for i, (request_id, num_tokens) in enumerate([("L0", 40), ("L1", 40), ("S0", 3),
                                                  ("S1", 3)]):
        scheduler.add_request(make_request(request_id, max_tokens=num_tokens,
                                           arrival_time=1.0 + i, first_token=1000 * (i + 1),
                                           predicted_output_tokens=num_tokens))
    return {"order": run(scheduler)}


def running_order_skip(policy: str) -> dict[str, Any]:
    """The same seeded load through two schedulers, one sorting `running` by the policy's key
    at every step and one skipping the sort where the step cannot depend on the order: what
    each step schedules and preempts, and how many steps skipped it. A tight token budget and
    KV cache make some steps depend on the order (partial prefills, memory preemption)."""
    import random

    runs = []
    for can_skip in (False, True):
        scheduler = make_scheduler(policy, max_num_seqs=8, num_blocks=40, budget=96)
        scheduler._order_can_be_moot = can_skip and scheduler._order_can_be_moot
        skipped = [0]
        is_moot = scheduler._running_order_is_moot

        def counted(throttle: bool, is_moot: Any = is_moot, skipped: list[int] = skipped) -> bool:
            moot = is_moot(throttle)
            skipped[0] += moot
            return moot

        scheduler._running_order_is_moot = counted  # type: ignore[method-assign]
        rng = random.Random(7)
        for i in range(40):
            scheduler.add_request(make_request(
                f"r{i}", num_prompt_tokens=rng.randint(8, 200), max_tokens=rng.randint(1, 80),
                arrival_time=1.0 + i, first_token=200 * i, tenant=rng.choice("ab"),
                priority=rng.randrange(2)))
        steps: list[Any] = []
        run(scheduler, on_step=lambda i, out, steps=steps: steps.append(
            [sorted(out.num_scheduled_tokens.items()), sorted(out.preempted_req_ids or ())]))
        runs.append({"steps": steps, "skipped": skipped[0],
                     "counters": dict(getattr(scheduler.shunter_policy, "counters", {}))})
    return {"sorted": runs[0], "skipping": runs[1]}


def other_vllm_is_refused() -> dict[str, Any]:
    """Importing the adapter under another vLLM series raises Shunter's message (last: it
    reloads the module)."""
    real = vllm.__version__
    vllm.__version__ = "0.33.0"
    try:
        importlib.reload(adapter)
        message = None
    except ConfigError as exc:
        message = str(exc)
    finally:
        vllm.__version__ = real
        importlib.reload(adapter)
    return {"message": message}


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "fcfs_two_tenants": lambda: two_tenants("fcfs"),
    "vtc_two_tenants": lambda: two_tenants("vtc"),
    "vtc_two_tenants_async": lambda: two_tenants("vtc", async_scheduling=True),
    "vtc_charges_once": vtc_charges_once,
    "skipped_head_is_not_charged": skipped_head_is_not_charged,
    "plas_programs": lambda: plas_programs("plas"),
    "fcfs_programs": lambda: plas_programs("fcfs"),
    "priority_preempts": priority_preempts,
    "fcfs_no_priority_preemption": fcfs_no_priority_preemption,
    "sarathi_budget": sarathi_budget,
    "sjf_short_jobs_first": lambda: short_jobs_first("sjf"),
    "fcfs_short_jobs_in_turn": lambda: short_jobs_first("fcfs"),
    "every_policy_runs": every_policy_runs,
    "vtc_running_order_skip": lambda: running_order_skip("vtc"),
    "priority_running_order_skip": lambda: running_order_skip("priority"),
    "other_vllm_is_refused": other_vllm_is_refused,
}

if __name__ == "__main__":
    results: dict[str, Any] = {}
    for name, scenario in SCENARIOS.items():
        try:
            results[name] = scenario()
        except Exception as exc:  # reported, so that one broken scenario hides no other
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    assert ShunterAsyncScheduler is not None
    print("HARNESS-RESULT " + json.dumps(results, default=str))
