"""Configuration of the reference engine: one validated dataclass, defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shunter.core.types import DEFAULT_BLOCK_SIZE
from shunter.errors import ConfigError

__all__ = ["DEFAULT_MAX_NUM_BATCHED_TOKENS", "DTYPES", "EngineConfig"]

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_MAX_NUM_BATCHED_TOKENS = 512


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """Which model, where it runs, and the scheduler's knobs (vLLM's names where it has them).

    `max_model_len` None means the model's own context length. `num_threads` None leaves
    PyTorch's default (one per core). `max_num_batched_tokens` None means
    `DEFAULT_MAX_NUM_BATCHED_TOKENS`, or, for a policy with a TBT target (`sarathi`), the
    largest budget that meets it on this model (`shunter.engine.budget`, measured at start-up).
    """

    model: str = "smollm2-135m"
    cache_dir: Path | None = None  # where named models are downloaded to
    device: str = "cpu"
    dtype: str = "bfloat16"
    num_threads: int | None = None
    num_blocks: int = 1024
    block_size: int = DEFAULT_BLOCK_SIZE
    max_num_batched_tokens: int | None = None
    max_num_seqs: int = 64
    max_model_len: int | None = None
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    preemption_mode: Literal["recompute", "swap"] = "recompute"
    num_host_blocks: int = 0
    policy: str = "fcfs"
    policy_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("num_blocks", "block_size", "max_num_batched_tokens", "max_num_seqs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.preemption_mode not in ("recompute", "swap"):
            raise ConfigError(f"preemption_mode must be 'recompute' or 'swap', "
                              f"got {self.preemption_mode!r}")
        if self.num_host_blocks < 0:
            raise ConfigError(f"num_host_blocks must be >= 0, got {self.num_host_blocks}")
