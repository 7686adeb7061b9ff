"""BatchLLM's request order for a large offline batch (Zheng et al., "BatchLLM: Optimizing
Large Batched LLM Inference with Global Prefix Sharing and Throughput-oriented Token
Batching", 2024).

The paper: (1) identify the prefixes requests share across the *whole* batch ahead of time (a
prefix tree), so each shared prefix is computed once and kept while the requests that share it
run, instead of hoping an LRU cache still holds it when the next sharer happens to arrive;
(2) reorder so requests with a larger decode-to-prefill ratio start first, which lets their
long decodes overlap the prefill-heavy requests that follow and keeps batches full;
(3) memory-centric token batching and (4) a fused attention kernel inside the engine.

Ours, from outside the engine (the engine's own prefix cache keeps a prefix while its sharers
run, since they are sent together): sorting the prompts as strings is a depth-first walk of the
prefix tree, so sharers are adjacent; a group is a run of prompts whose common prefix with the
group's first is at least `min_shared_chars` long (an engine shares whole KV blocks, so a
short common prefix is worth nothing); groups start in decreasing order of their largest
decode-to-prefill ratio (`max_tokens` over prompt characters; a request without max_tokens
counts `default_max_tokens`), sharers in prompt order within a group. (3) and (4) are the
engine's and not modelled here.
"""

from __future__ import annotations

from collections.abc import Sequence

from shunter.batch.file import BatchLine

__all__ = ["ORDERS", "batchllm_order", "prefix_groups"]

ORDERS = ("batchllm", "file")


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefix_groups(lines: Sequence[BatchLine], min_shared_chars: int = 64) -> list[list[BatchLine]]:
    """Requests in prompt order, cut into runs that share at least `min_shared_chars`."""
    if min_shared_chars < 1:
        raise ValueError(f"min_shared_chars must be >= 1, got {min_shared_chars}")
    keyed = sorted(lines, key=lambda line: (line.prompt_key, line.line_no))
    groups: list[list[BatchLine]] = []
    for line in keyed:
        if groups:
            first = groups[-1][0].prompt_key
            if _common_prefix_len(first, line.prompt_key) >= min_shared_chars:
                groups[-1].append(line)
                continue
        groups.append([line])
    return groups


def batchllm_order(lines: Sequence[BatchLine], *, min_shared_chars: int = 64,
                   default_max_tokens: int = 256) -> list[BatchLine]:
    """Every line once, in BatchLLM's order (see the module docstring)."""
    def ratio(line: BatchLine) -> float:
        out = line.max_tokens if line.max_tokens is not None else default_max_tokens
        return out / max(1, len(line.prompt_key))

    groups = prefix_groups(lines, min_shared_chars)
    groups.sort(key=lambda group: -max(map(ratio, group)))  # stable: ties keep prompt order
    return [line for group in groups for line in group]
