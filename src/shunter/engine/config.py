"""Configuration of the reference engine: one validated dataclass, defaults in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shunter.core.sched.config import (
    SCHEDULER_DEFAULTS,
    SchedulerConfig,
    check_scheduler_options,
)
from shunter.errors import ConfigError

__all__ = ["DEFAULT_MAX_NUM_BATCHED_TOKENS", "DTYPES", "ENGINE_DERIVED_SCHEDULER_OPTIONS",
           "ENGINE_SCHEDULER_DEFAULTS", "EngineConfig"]

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_MAX_NUM_BATCHED_TOKENS = 512
# Where the engine's scheduler defaults differ from SchedulerConfig's (sized for a GPU): a CPU
# replica batches fewer requests. `max_num_batched_tokens` is DEFAULT_MAX_NUM_BATCHED_TOKENS
# unless a policy with a TBT target (`sarathi`) derives it.
ENGINE_SCHEDULER_DEFAULTS: Mapping[str, Any] = {"max_num_seqs": 64}
# SchedulerConfig fields a user may not set on the engine: its KV pool is
# `EngineConfig.num_blocks`, and it serves no LoRA adapters (max_loras).
ENGINE_DERIVED_SCHEDULER_OPTIONS = frozenset({"num_blocks", "emit_block_tables", "max_loras"})


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """Which model, where it runs, how much KV it holds and how it schedules.

    `scheduler` holds SchedulerConfig overrides, the same options with the same names and
    checks as the simulator's `[scheduler]` table (`shunter.core.sched.config`), on top of
    ENGINE_SCHEDULER_DEFAULTS; `max_model_len` there is capped by the model's own context.
    `num_threads` None leaves PyTorch's default (one per core).
    """

    model: str = "smollm2-135m"
    cache_dir: Path | None = None  # where named models are downloaded to
    device: str = "cpu"
    dtype: str = "bfloat16"
    num_threads: int | None = None
    num_blocks: int = 1024
    scheduler: Mapping[str, Any] = field(default_factory=dict)
    policy: str = "fcfs"
    policy_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.num_blocks < 1:
            raise ConfigError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1, got {self.num_threads}")
        try:
            check_scheduler_options(self.scheduler, derived=ENGINE_DERIVED_SCHEDULER_OPTIONS,
                                    where="engine scheduler")
            SchedulerConfig(num_blocks=self.num_blocks, **self.scheduler)  # the value ranges
        except ValueError as exc:
            raise ConfigError(str(exc) if "engine scheduler" in str(exc)
                              else f"engine scheduler: {exc}") from exc

    @classmethod
    def of(cls, **kwargs: Any) -> EngineConfig:
        """An EngineConfig from flat keywords, as vLLM's `LLM(...)` takes them: any name of a
        SchedulerConfig option (`max_num_seqs=8`) goes into `scheduler`, the rest are fields."""
        options = dict(kwargs.pop("scheduler", None) or {})
        for name in SCHEDULER_DEFAULTS.keys() - ENGINE_DERIVED_SCHEDULER_OPTIONS:
            if name in kwargs:
                options[name] = kwargs.pop(name)
        try:
            return cls(scheduler=options, **kwargs)
        except TypeError as exc:  # a keyword that is neither a field nor a scheduler option
            raise ConfigError(f"engine config: {exc}") from exc

    def option(self, name: str) -> Any:
        """Scheduler option `name` as this engine runs it (before any policy derives one)."""
        if name in self.scheduler:
            return self.scheduler[name]
        if name in ENGINE_SCHEDULER_DEFAULTS:
            return ENGINE_SCHEDULER_DEFAULTS[name]
        return self.num_blocks if name == "num_blocks" else SCHEDULER_DEFAULTS[name]

    @property
    def block_size(self) -> int:
        return int(self.option("block_size"))

    @property
    def max_num_seqs(self) -> int:
        return int(self.option("max_num_seqs"))
