"""BatchLLM's order for a large offline batch (Zheng et al., "BatchLLM: Optimizing Large
Batched LLM Inference with Global Prefix Sharing and Throughput-oriented Token Batching", 2024),
one implementation for `shunter batch` (prompts as text) and the simulator's batch jobs
(prompts as prefix-block ids).

The paper: (1) identify the prefixes requests share across the *whole* batch ahead of time (a
prefix tree), so each shared prefix is computed once and kept while the requests that share it
run, instead of hoping an LRU cache still holds it when the next sharer happens to arrive;
(2) reorder so requests with a larger decode-to-prefill ratio start first, which lets their
long decodes overlap the prefill-heavy requests that follow and keeps batches full;
(3) memory-centric token batching and (4) a fused attention kernel inside the engine.

Ours, from outside the engine (the engine's own prefix cache keeps a prefix while its sharers
run, since they are sent together): sorting the prompts (strings, or tuples of block ids) is a
depth-first walk of the prefix tree, so sharers are adjacent; a group is a run of prompts whose
common prefix with the group's first is at least `min_shared` long (characters, or blocks: an
engine shares whole KV blocks, so a short common prefix is worth nothing); groups start in
decreasing order of their largest decode-to-prefill ratio, sharers in prompt order within a
group. (3) and (4) are the engine's and not modelled here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from shunter.core.types import RequestId, RequestSpec
from shunter.workload.program import FollowUp, ProgramWorkload

__all__ = ["BATCH_ORDERS", "batch_job", "batchllm_groups", "batchllm_order", "prefix_groups"]

BATCH_ORDERS = ("batchllm", "file")
DEFAULT_MAX_TOKENS = 256  # a request without a cap counts this many output tokens

T = TypeVar("T")


def _common_prefix_len(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefix_groups(items: Sequence[T], key: Callable[[T], Any], min_shared: int
                  ) -> list[list[T]]:
    """`items` sorted by `key` (a string or tuple: the prompt), cut into runs that share at
    least `min_shared` leading elements with their run's first (ties keep input order)."""
    if min_shared < 1:
        raise ValueError(f"min_shared must be >= 1, got {min_shared}")
    keyed = sorted(items, key=key)  # stable: equal prompts keep their input order
    groups: list[list[T]] = []
    for item in keyed:
        if groups and _common_prefix_len(key(groups[-1][0]), key(item)) >= min_shared:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def batchllm_groups(items: Sequence[T], *, key: Callable[[T], Any],
                    ratio: Callable[[T], float], min_shared: int) -> list[list[T]]:
    """The prefix groups in BatchLLM's order: largest decode-to-prefill `ratio` first."""
    groups = prefix_groups(items, key, min_shared)
    groups.sort(key=lambda group: -max(map(ratio, group)))  # stable: ties keep prompt order
    return groups


def batchllm_order(items: Sequence[T], *, key: Callable[[T], Any],
                   ratio: Callable[[T], float], min_shared: int) -> list[T]:
    """Every item once, in BatchLLM's order (see the module docstring)."""
    groups = batchllm_groups(items, key=key, ratio=ratio, min_shared=min_shared)
    return [item for group in groups for item in group]


def batch_job(specs: Sequence[RequestSpec], order: str = "batchllm", *,
              min_shared_blocks: int = 1) -> ProgramWorkload:
    """The requests as one offline batch submitted at t = 0, in `order`.

    "file" keeps their order. "batchllm" groups them by shared prefix blocks (`hash_ids`; a
    request without them shares nothing) and computes each group's shared prefix once before
    its requests: a warm-up request (id `warmup:` + the group's first id; the common prefix as
    its prompt, one output token) goes first, and the group's requests are released when it
    finishes. Without it a vLLM-like engine admits a group's requests in the same step and
    every one of them computes the prefix (blocks are shared once computed, not while being
    computed), so grouping alone would make sharing worse, not better. Groups go one after
    another, as BatchLLM schedules them: the next group's warm-up is released with this
    group's requests, so a prefix is computed just before its sharers run and is not evicted
    by the prefixes of groups still far from running (all warm-ups at once thrash the cache
    as soon as the batch's prefixes outgrow it). Requests that share nothing go at t = 0.
    The decode-to-prefill
    ratio reads `max_output_tokens` (the cap the user sent, `DEFAULT_MAX_TOKENS` without one),
    never the true output length."""
    if order not in BATCH_ORDERS:
        raise ValueError(f"order must be one of {', '.join(BATCH_ORDERS)}, got {order!r}")
    if order == "file":
        return ProgramWorkload([replace(spec, arrival_s=0.0) for spec in specs], {})

    def key(spec: RequestSpec) -> tuple[int, ...]:
        return spec.hash_ids or ()

    def ratio(spec: RequestSpec) -> float:
        out = spec.max_output_tokens or DEFAULT_MAX_TOKENS
        return out / max(1, spec.num_prompt_tokens)

    groups = batchllm_groups(specs, key=key, ratio=ratio, min_shared=min_shared_blocks)
    first_calls: list[RequestSpec] = []
    follow_ups: dict[RequestId, FollowUp | tuple[FollowUp, ...]] = {}
    previous: RequestSpec | None = None  # the last group's warm-up
    for group in groups:
        shared = _common_prefix_len(key(group[0]), key(group[-1])) if len(group) > 1 else 0
        if shared < min_shared_blocks:
            first_calls.extend(replace(spec, arrival_s=0.0) for spec in group)
            continue
        block = group[0].hash_block_size
        warmup = RequestSpec(request_id=f"warmup:{group[0].request_id}", arrival_s=0.0,
                             num_prompt_tokens=shared * block, num_output_tokens=1,
                             max_output_tokens=1, hash_ids=key(group[0])[:shared],
                             hash_block_size=block, tenant=group[0].tenant)
        if previous is None:
            first_calls.append(warmup)
        else:
            follow_ups[previous.request_id] += (FollowUp(warmup),)  # type: ignore[operator]
        follow_ups[warmup.request_id] = tuple(FollowUp(replace(spec, arrival_s=0.0))
                                              for spec in group)
        previous = warmup
    return ProgramWorkload(first_calls, follow_ups)
