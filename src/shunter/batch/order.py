"""`shunter batch`'s request order: BatchLLM's (`shunter.workload.prefix_order`, which says
what it is), on prompts as text; `min_shared_chars` is the shortest common prefix, in
characters, that makes two requests a group."""

from __future__ import annotations

from collections.abc import Sequence

from shunter.batch.file import BatchLine
from shunter.workload import prefix_order
from shunter.workload.prefix_order import BATCH_ORDERS as ORDERS

__all__ = ["ORDERS", "batchllm_groups", "batchllm_order", "prefix_groups"]


def _key(line: BatchLine) -> str:
    return line.prompt_key


def prefix_groups(lines: Sequence[BatchLine], min_shared_chars: int = 64) -> list[list[BatchLine]]:
    """Requests in prompt order, cut into runs that share at least `min_shared_chars`."""
    if min_shared_chars < 1:
        raise ValueError(f"min_shared_chars must be >= 1, got {min_shared_chars}")
    return prefix_order.prefix_groups(lines, _key, min_shared_chars)


def batchllm_groups(lines: Sequence[BatchLine], *, min_shared_chars: int = 64,
                    default_max_tokens: int = 256) -> list[list[BatchLine]]:
    """The prefix groups (a line sharing nothing is a group of one) in BatchLLM's order."""
    def ratio(line: BatchLine) -> float:
        out = line.max_tokens if line.max_tokens is not None else default_max_tokens
        return out / max(1, len(line.prompt_key))

    if min_shared_chars < 1:
        raise ValueError(f"min_shared_chars must be >= 1, got {min_shared_chars}")
    return prefix_order.batchllm_groups(lines, key=_key, ratio=ratio, min_shared=min_shared_chars)


def batchllm_order(lines: Sequence[BatchLine], *, min_shared_chars: int = 64,
                   default_max_tokens: int = 256) -> list[BatchLine]:
    """Every line once, in BatchLLM's order."""
    groups = batchllm_groups(lines, min_shared_chars=min_shared_chars,
                             default_max_tokens=default_max_tokens)
    return [line for group in groups for line in group]
