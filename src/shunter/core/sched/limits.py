"""A request's limits on one replica: whether it can ever run here, and when it must stop."""

from __future__ import annotations

from typing import Final

from shunter.core.request import Request
from shunter.core.sched.config import SchedulerConfig
from shunter.core.types import RequestId, RequestStatus

__all__ = ["rejection_reason", "stop_status"]

# read once (on Python 3.11 an enum member read goes through EnumType.__getattr__'s slot)
_STOPPED: Final = RequestStatus.FINISHED_STOPPED
_LENGTH: Final = RequestStatus.FINISHED_LENGTH


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def rejection_reason(config: SchedulerConfig, request: Request) -> str | None:
    """Why a request can never run under `config`, or None if it can. The reason names the
    limit, not the request's own length, so that the rejections of a run group by reason."""
    if request.num_prompt_tokens >= config.max_model_len:
        return f"prompt leaves no room for output within max_model_len={config.max_model_len}"
    num_blocks = _cdiv(request.num_prompt_tokens + 1, config.block_size)
    if num_blocks > config.num_blocks:
        return (f"prompt needs more KV blocks than the cache's {config.num_blocks} "
                f"(of {config.block_size} tokens)")
    if not config.enable_chunked_prefill and request.num_prompt_tokens > config.max_num_batched_tokens:
        return (f"prompt exceeds max_num_batched_tokens={config.max_num_batched_tokens} and "
                "chunked prefill is off")
    return None


def stop_status(request: Request, stopped: frozenset[RequestId], max_seq_len: int) -> RequestStatus | None:
    """How a request that just sampled a token ends, if it does: the executor's stop first,
    then its max output tokens, then the longest sequence the replica can hold."""
    if request.request_id in stopped:
        return _STOPPED
    if request.max_output_tokens is not None and request.num_output_tokens >= request.max_output_tokens:
        return _LENGTH
    if request.num_tokens >= max_seq_len:
        return _LENGTH
    return None
