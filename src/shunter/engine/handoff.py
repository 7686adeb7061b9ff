"""A request's KV handed from one engine to another: TetriInfer's prefill -> decode handoff.

A prefill engine computes a prompt and samples the first token; at that step's end (between
steps, on its step thread) `export_request` copies the KV of the request's computed tokens out
of the model runner's blocks (the gather `ModelRunner.swap_out` does, kept on the device) and
detaches the request from its scheduler (`core.sched.handover.detach`: its blocks are freed, full
ones stay in its prefix cache); what the executor and the front-end hold for it (sampling
state and generator, grammar, stop-string detokenizer, token ids, usage counts) travels with
it. `import_request`, on the decode engine's step thread, attaches it there
(`core.sched.handover.attach`: fresh blocks, full ones entered into that prefix cache) and copies the
KV into those blocks, as `ModelRunner.swap_in` copies a swapped request back; the request then
decodes there as if it had never moved: greedy output is token for token that of one engine.
A decode engine that cannot take it (`import_request` False) is asked again later; one with
nothing running that still cannot recomputes it instead (`requeue_request`), as the
simulator's decode pool does (`shunter.sim.disagg`).

Both engines are in one process (in-process replicas); the copy is a tensor copy, no link.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from shunter.core.request import Request
from shunter.core.sched import handover
from shunter.core.types import RequestId, RequestStatus
from shunter.engine.llm import LLMEngine

__all__ = ["KvHandoff", "can_export", "export_request", "import_request", "requeue_request"]


@dataclass(slots=True, kw_only=True)
class KvHandoff:
    """A request detached from a prefill engine with its KV, not yet in a decode engine."""

    request: Request
    kv: torch.Tensor  # [layers, 2, blocks, kv heads, block size, head dim]: computed tokens
    executor_state: tuple[object, ...]  # `EngineExecutor.take_request`
    tracked: object  # the front-end's record (`LLMEngine._tracked`): usage and detokenizer
    exported_s: float  # time.perf_counter() at export: the handoff's time starts there

    @property
    def request_id(self) -> RequestId:
        return self.request.request_id


def can_export(engine: LLMEngine, request_id: RequestId) -> bool:
    """Whether the request is running there with its prompt computed and a first token
    sampled (what the simulator's prefill replica hands off, `SimReplica.prefilled_ids`)."""
    request = engine.scheduler.requests.get(request_id)
    return (request is not None and request.status == RequestStatus.RUNNING
            and request.num_output_tokens > 0 and request.num_uncomputed_tokens == 1)


def export_request(engine: LLMEngine, request_id: RequestId) -> KvHandoff:
    """Take a prefilled request (`can_export`) out of `engine` with a copy of its KV; call
    on its step thread between steps. Its blocks are free there afterwards."""
    assert can_export(engine, request_id), f"{request_id} is not prefilled and running"
    scheduler, runner = engine.scheduler, engine.executor.runner
    request = scheduler.requests[request_id]
    num_blocks = scheduler.kv.num_blocks_for(request.num_computed_tokens)
    kv = runner.kv[:, :, request.block_ids[:num_blocks]]  # advanced indexing: a copy
    handover.detach(scheduler, request_id)
    return KvHandoff(request=request, kv=kv,
                     executor_state=engine.executor.take_request(request_id),
                     tracked=engine._tracked.pop(request_id),  # (the engine package's own record)
                     exported_s=time.perf_counter())


def _check_fits(engine: LLMEngine, handoff: KvHandoff) -> None:
    runner = engine.executor.runner
    expected = (*runner.kv.shape[:2], *runner.kv.shape[3:])
    found = (*handoff.kv.shape[:2], *handoff.kv.shape[3:])
    if found != expected:
        raise ValueError(f"{handoff.request_id}: KV of shape {tuple(handoff.kv.shape)} does not "
                         f"fit this engine's cache {tuple(runner.kv.shape)} (another model or "
                         "block size)")


def import_request(engine: LLMEngine, handoff: KvHandoff) -> bool:
    """Continue a handed-off request in `engine` with its KV copied into fresh blocks; False,
    changing nothing, when its blocks or a batch slot are missing. Step thread, between
    steps."""
    _check_fits(engine, handoff)
    request = handoff.request
    if not handover.attach(engine.scheduler, request):
        return False
    num_blocks = handoff.kv.shape[2]
    runner = engine.executor.runner
    runner.kv[:, :, request.block_ids[:num_blocks]] = handoff.kv.to(runner.device)
    _adopt(engine, handoff)
    return True


def requeue_request(engine: LLMEngine, handoff: KvHandoff) -> None:
    """Continue a handed-off request in `engine` by recomputing its KV (its prompt and first
    token: no token is lost or repeated), when it cannot be attached."""
    _check_fits(engine, handoff)
    registration, _, probe = handoff.executor_state
    handoff.executor_state = (registration, None, probe)  # recompute: ids come anew
    handover.requeue(engine.scheduler, handoff.request)
    _adopt(engine, handoff)


def _adopt(engine: LLMEngine, handoff: KvHandoff) -> None:
    engine.executor.put_request(handoff.request_id, handoff.executor_state)
    engine._tracked[handoff.request_id] = handoff.tracked  # type: ignore[assignment]
