"""A request's scheduling state, and the only functions that change its status.

Token-centric, as in vLLM v1: a request has `num_tokens` (prompt + generated so far) and
`num_computed_tokens` (whose KV exists). There is no prefill or decode phase: a request whose
computed count is far behind is prefilling; one exactly one behind is decoding.

The true output length of a trace never reaches this record: a request only learns it has
ended when its executor says so (`StepResult.stopped`) or a length limit is hit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Final

from shunter.core.kv.hashing import BlockHasher
from shunter.core.types import (
    DEFAULT_BLOCK_SIZE,
    ExpertProfile,
    RequestId,
    RequestSpec,
    RequestStatus,
)

__all__ = ["Request"]

_WAITING: Final = RequestStatus.WAITING  # (read once: see core.sched.scheduler's _RUNNING)


@dataclass(slots=True, eq=False, init=False)
class Request:
    request_id: RequestId
    arrival_s: float
    num_prompt_tokens: int
    max_output_tokens: int | None
    tenant: str
    priority: int
    session_id: str | None
    program_id: str | None
    ttft_slo_s: float | None
    tpot_slo_s: float | None
    sampling_seed: int | None
    # What a predictor believes the output length is (SJF/LTR policies); never the truth.
    predicted_output_tokens: float | None
    lora_id: str | None  # the LoRA adapter it runs with (`SchedulerConfig.max_loras`); None: base
    # its spread over a MoE model's experts, known before it runs (Read-ME's pre-gating router)
    expert_profile: ExpertProfile | None

    status: RequestStatus
    num_output_tokens: int
    num_computed_tokens: int
    token_ids: list[int] | None  # prompt + output token ids in the engine; None in sim
    block_ids: list[int]
    block_hashes: list[int]
    num_published_blocks: int  # leading block_ids whose hashes are in the prefix cache
    # Blocks hashed and published as they fill: the shareable ones
    # (`BlockHasher.num_shareable_blocks`) until the request's KV is first freed while it goes
    # on (`KVCacheManager.free(alive=True)`, `share_all_blocks`), then all. Private blocks can
    # only ever be matched by this request after such a free, so publishing them then, not as
    # they fill, changes no lookup; a request that just finishes never hashes or publishes
    # them (most requests of most traces: no hash and no prefix-cache insert per block).
    publish_limit: int
    host_block_ids: list[int] | None  # where the KV lives while SWAPPED
    num_cached_tokens: int | None  # prompt tokens hit in the prefix cache, at first admission
    num_preemptions: int
    # sampled a new token since last (re)admission; see `is_preemptible`
    has_progressed: bool
    first_scheduled_s: float | None
    hasher: BlockHasher | None

    # explicit, not generated: one is built per request and generated dataclass methods stay
    # interpreted under the compiled build (see `core.sched.interface`)
    def __init__(self, *, request_id: RequestId, arrival_s: float, num_prompt_tokens: int,
                 max_output_tokens: int | None = None, tenant: str = "default",
                 priority: int = 0, session_id: str | None = None,
                 program_id: str | None = None, ttft_slo_s: float | None = None,
                 tpot_slo_s: float | None = None, sampling_seed: int | None = None,
                 predicted_output_tokens: float | None = None,
                 token_ids: list[int] | None = None, hasher: BlockHasher | None = None,
                 lora_id: str | None = None) -> None:
        self.request_id = request_id
        self.arrival_s = arrival_s
        self.num_prompt_tokens = num_prompt_tokens
        self.max_output_tokens = max_output_tokens
        self.tenant = tenant
        self.priority = priority
        self.session_id = session_id
        self.program_id = program_id
        self.ttft_slo_s = ttft_slo_s
        self.tpot_slo_s = tpot_slo_s
        self.sampling_seed = sampling_seed
        self.predicted_output_tokens = predicted_output_tokens
        self.lora_id = lora_id
        self.expert_profile = None
        self.status = _WAITING
        self.num_output_tokens = 0
        self.num_computed_tokens = 0
        self.token_ids = token_ids
        self.block_ids = []
        self.block_hashes = []
        self.num_published_blocks = 0
        self.publish_limit = (sys.maxsize if hasher is None
                              else hasher.num_shareable_blocks(token_ids is not None))
        self.host_block_ids = None
        self.num_cached_tokens = None
        self.num_preemptions = 0
        self.has_progressed = False
        self.first_scheduled_s = None
        self.hasher = hasher

    @classmethod
    def from_spec(cls, spec: RequestSpec, *, block_size: int = DEFAULT_BLOCK_SIZE,
                  hash_blocks: bool = True) -> Request:
        """Build scheduling state from a workload spec, leaving its true output length behind.

        `hash_blocks=False` (a scheduler without a prefix cache) skips the block hashes, which
        nothing else reads."""
        token_ids = list(spec.prompt_token_ids) if spec.prompt_token_ids is not None else None
        hasher = None
        if hash_blocks:
            hasher = BlockHasher(block_size, hash_ids=spec.hash_ids,
                                 hash_block_size=spec.hash_block_size,
                                 salt_id=spec.request_id)
        request = Request(  # not cls(...): a direct call is a native one when compiled
            request_id=spec.request_id, arrival_s=spec.arrival_s,
            num_prompt_tokens=spec.num_prompt_tokens, max_output_tokens=spec.max_output_tokens,
            tenant=spec.tenant, priority=spec.priority, session_id=spec.session_id,
            program_id=spec.program_id, ttft_slo_s=spec.ttft_slo_s, tpot_slo_s=spec.tpot_slo_s,
            token_ids=token_ids, hasher=hasher, lora_id=spec.lora_id,
        )
        request.expert_profile = spec.expert_profile
        request.extend_hashes()
        return request

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed_tokens < self.num_prompt_tokens

    @property
    def is_preemptible(self) -> bool:
        """No preemption storms: a request preempted before may not be preempted again until it
        has made progress (sampled a new token) since it was readmitted."""
        return self.has_progressed or self.num_preemptions == 0

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_output(self, token_id: int) -> None:
        """Record one sampled token and extend the block hashes it completes."""
        self.num_output_tokens += 1
        if self.token_ids is not None:
            self.token_ids.append(token_id)
        self.extend_hashes()

    def append_outputs(self, num_tokens: int) -> None:
        """Record `num_tokens` sampled tokens at once (the simulator's decode runs; no token ids)."""
        assert self.token_ids is None, "bulk appends are for requests without token ids"
        self.num_output_tokens += num_tokens
        self.extend_hashes()

    def extend_hashes(self) -> None:
        """Hash the blocks that became full, up to the publish limit: a private block's hash
        is only needed once the request may come back for it (`share_all_blocks`)."""
        hasher = self.hasher
        if hasher is None:
            return
        num_full = (self.num_prompt_tokens + self.num_output_tokens) // hasher.block_size
        if num_full > self.publish_limit:
            num_full = self.publish_limit
        if num_full > len(self.block_hashes):  # (most tokens complete no block: a cheap exit)
            hasher.extend(self.block_hashes, num_full * hasher.block_size, self.token_ids)

    def share_all_blocks(self) -> None:
        """From now on hash and publish every block, private ones included: the request's KV
        is being freed while it goes on (or copied to host), so it may come back for them."""
        self.publish_limit = sys.maxsize
        self.extend_hashes()

    def set_status(self, status: RequestStatus) -> None:
        assert not self.status.is_finished, f"{self.request_id} is already {self.status.name}"
        self.status = status
