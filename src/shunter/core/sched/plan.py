"""The mutable plan of one step, made into a (read-only) SchedulerOutput by `schedule`."""

from __future__ import annotations

from shunter.core.request import Request
from shunter.core.sched.interface import NewRequestData, ScheduledChunk, SchedulerOutput
from shunter.core.types import RequestId, StepShape

__all__ = ["StepPlan"]


class StepPlan:
    __slots__ = ("budget", "new_requests", "offload", "preempted_ids", "scheduled", "swap_in",
                 "swap_out")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.scheduled: list[tuple[Request, int]] = []
        self.new_requests: list[NewRequestData] = []
        self.swap_out: list[tuple[int, int]] = []
        self.swap_in: list[tuple[int, int]] = []
        self.offload: list[tuple[int, int]] = []  # finished requests' KV stored to host
        self.preempted_ids: list[RequestId] = []

    def add(self, request: Request, num_tokens: int) -> None:
        assert 0 < num_tokens <= self.budget, f"{num_tokens} tokens over budget {self.budget}"
        self.scheduled.append((request, num_tokens))
        self.budget -= num_tokens

    def add_new_request(self, request: Request) -> None:
        """The executor sees the request afresh: first admission, or back from recompute."""
        token_ids = tuple(request.token_ids) if request.token_ids is not None else None
        self.new_requests.append(NewRequestData(request.request_id, token_ids,
                                                request.num_prompt_tokens, request.sampling_seed))

    def build(self, step_id: int, finished_ids: tuple[RequestId, ...],
              emit_block_tables: bool) -> SchedulerOutput:
        chunks = []
        prefill_chunks = []
        num_decodes = 0
        num_decode_context = 0
        drafts: dict[RequestId, int] = {}  # speculative decodes: tokens past the last known one
        for request, n in self.scheduled:
            computed = request.num_computed_tokens
            num_past = computed + n - request.num_tokens
            is_sampling = num_past >= 0  # (> 0 only for a decode with draft tokens)
            blocks = tuple(request.block_ids) if emit_block_tables else ()
            chunks.append(ScheduledChunk(request.request_id, computed, n, blocks, is_sampling))
            if n == 1 + num_past and computed > 0:  # one token behind: a decode
                num_decodes += 1
                num_decode_context += computed
                if num_past:
                    drafts[request.request_id] = num_past
            else:
                prefill_chunks.append((n, computed))
        shape = StepShape(prefill_chunks=tuple(prefill_chunks), num_decode_requests=num_decodes,
                          num_decode_context_tokens=num_decode_context,
                          num_decode_draft_tokens=sum(drafts.values()))
        return SchedulerOutput(
            step_id=step_id, chunks=tuple(chunks), new_requests=tuple(self.new_requests),
            swap_out=tuple(self.swap_out), swap_in=tuple(self.swap_in),
            offload=tuple(self.offload), preempted_ids=tuple(self.preempted_ids), finished_ids=finished_ids, shape=shape,
            num_draft_tokens=drafts,
        )
