"""What the engine front-end reports about requests: per-step deltas and whole completions."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from shunter.core.types import FinishReason, RequestId

__all__ = ["Completion", "EngineOutput", "TokenLogprobs", "WallClock"]


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """One position's log-probabilities from the model's raw distribution: the token there
    (sampled, or the prompt's) and the `k` most likely tokens, most likely first. The prompt's
    first token has none (`logprob` None): nothing predicts it."""

    token_id: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()  # (token id, log-prob)


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
    logprobs: tuple[TokenLogprobs, ...] = ()  # one per new token, when the request asked
    # with the request's first output, when it asked (echo): one per prompt token
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None

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
    logprobs: tuple[TokenLogprobs, ...] = ()
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None

    @classmethod
    def from_outputs(cls, outputs: Sequence[EngineOutput]) -> Completion:
        """A finished request's outputs, in order (the last one finished), as one record."""
        last = outputs[-1]
        assert last.finish_reason is not None, f"{last.request_id} has not finished"
        return cls(request_id=last.request_id,
                   token_ids=tuple(t for o in outputs for t in o.new_token_ids),
                   text="".join(o.text for o in outputs), finish_reason=last.finish_reason,
                   num_prompt_tokens=last.num_prompt_tokens,
                   num_cached_tokens=last.num_cached_tokens,
                   logprobs=tuple(lp for o in outputs for lp in o.logprobs),
                   prompt_logprobs=next((o.prompt_logprobs for o in outputs
                                         if o.prompt_logprobs is not None), None))


@dataclass(slots=True)
class WallClock:
    """The engine's clock for the core scheduler: monotonic seconds since construction."""

    start_s: float = field(default_factory=time.monotonic)

    def now(self) -> float:
        return time.monotonic() - self.start_s
