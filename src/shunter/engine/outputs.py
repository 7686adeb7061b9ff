"""What the engine front-end reports about requests: per-step deltas and whole completions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shunter.core.types import FinishReason, RequestId

__all__ = ["Completion", "EngineOutput", "WallClock"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOutput:
    """One request's progress in one step: new tokens, the text they completed, usage."""

    request_id: RequestId
    new_token_ids: tuple[int, ...]
    text: str  # new text since the previous output; whole UTF-8 characters only
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int
    num_output_tokens: int  # so far, this output's tokens included
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """A finished request: all its output tokens and text."""

    request_id: RequestId
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    num_prompt_tokens: int
    num_cached_tokens: int = 0


@dataclass(slots=True)
class WallClock:
    """The engine's clock for the core scheduler: monotonic seconds since construction."""

    start_s: float = field(default_factory=time.monotonic)

    def now(self) -> float:
        return time.monotonic() - self.start_s
