"""The CostModel protocol: what the simulator's executor asks about time and KV capacity."""

from __future__ import annotations

from typing import Protocol

from shunter.core.types import StepShape

__all__ = ["CostModel"]


class CostModel(Protocol):
    """Predicts how long one replica (one model on `tp` GPUs) takes to do things."""

    def step_time_s(self, shape: StepShape) -> float:
        """Wall time of one engine step (one forward pass plus its CPU overhead) of this shape."""
        ...

    def decode_step_line_s(self, num_decodes: int) -> tuple[float, float]:
        """(fixed_s, s_per_context_token) of decode-only steps of `num_decodes` (>= 1) requests:
        `step_time_s` of such a step reading `c` KV tokens in all is `fixed_s + s_per_context_token
        * c`, bit for bit (the simulator's decode runs compute many steps from it)."""
        ...

    def swap_time_s(self, num_blocks: int, num_runs: int | None = None) -> float:
        """Time to copy `num_blocks` KV blocks between host and device memory, one direction;
        `num_runs`: how many runs of consecutive block ids they form (one copy each per layer
        and K/V plane), None for one batched copy."""
        ...

    def kv_transfer_time_s(self, num_tokens: int, bandwidth_bytes_s: float) -> float:
        """Time to send the KV cache of `num_tokens` tokens to another replica over a link."""
        ...

    def num_kv_blocks(self, block_size: int) -> int:
        """How many KV blocks of `block_size` tokens fit on the replica, over all its TP ranks."""
        ...

    @property
    def max_model_len(self) -> int:
        """Longest sequence (prompt + output tokens) the replica serves."""
        ...
