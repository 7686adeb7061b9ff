"""SamplingParams: how one request picks tokens and when it stops (OpenAI and vLLM semantics).

Ranges are OpenAI's and vLLM's; each violation is a RequestError naming the parameter. What
needs the model to check (token ids inside the vocabulary) is checked by `LLMEngine`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shunter.engine.structured import StructuredOutput
from shunter.errors import RequestError

__all__ = ["MAX_LOGPROBS", "SamplingParams"]

MAX_LOGPROBS = 20  # alternatives per position (OpenAI's top_logprobs, vLLM's default cap)
MAX_LOGIT_BIAS = 100.0


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise RequestError(f"{param} {message}", param=param)


def _in(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """How one request picks tokens and when it stops."""

    max_tokens: int | None = None  # None: up to the model's context length
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int | None = None  # None or -1: no cut
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0  # EOS and stop_token_ids cannot come before this many outputs
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    allowed_token_ids: tuple[int, ...] | None = None  # vLLM: sample only among these
    logprobs: int | None = None  # None: none; k: the sampled token's plus the k most likely
    prompt_logprobs: int | None = None  # the same for every prompt token (echo)
    structured: StructuredOutput | None = None  # the text must match this
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        _check(self.max_tokens is None or self.max_tokens >= 1, "max_tokens",
               f"must be >= 1, got {self.max_tokens}")
        _check(_in(self.temperature, 0.0, 100.0), "temperature",
               f"must be in [0, 100], got {self.temperature}")
        _check(_in(self.top_p, 0.0, 1.0) and self.top_p > 0.0, "top_p",
               f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k is None or self.top_k == -1 or self.top_k >= 1, "top_k",
               f"must be -1 (no cut) or >= 1, got {self.top_k}")
        _check(_in(self.min_p, 0.0, 1.0), "min_p", f"must be in [0, 1], got {self.min_p}")
        _check(all(self.stop), "stop", "strings must not be empty")
        _check(all(t >= 0 for t in self.stop_token_ids), "stop_token_ids",
               "must be token ids >= 0")
        _check(self.min_tokens >= 0, "min_tokens", f"must be >= 0, got {self.min_tokens}")
        _check(self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
               f"must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_in(value, -2.0, 2.0), name, f"must be in [-2, 2], got {value}")
        _check(math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0.0,
               "repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        _check(all(t >= 0 and _in(b, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
                   for t, b in self.logit_bias), "logit_bias",
               "must map token ids >= 0 to values in [-100, 100]")
        _check(self.allowed_token_ids is None
               or (bool(self.allowed_token_ids) and all(t >= 0 for t in self.allowed_token_ids)),
               "allowed_token_ids", "must be a non-empty list of token ids >= 0")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check(value is None or 0 <= value <= MAX_LOGPROBS, name,
                   f"must be between 0 and {MAX_LOGPROBS}, got {value}")

    @property
    def top_k_cut(self) -> int | None:
        """The top-k cut, None when there is none."""
        return None if self.top_k is None or self.top_k < 1 else self.top_k

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0
                or self.presence_penalty != 0.0)

    @property
    def token_ids_used(self) -> dict[str, tuple[int, ...]]:
        """Every token id the request names, by parameter (checked against the vocabulary)."""
        return {"logit_bias": tuple(t for t, _ in self.logit_bias),
                "stop_token_ids": self.stop_token_ids,
                "allowed_token_ids": self.allowed_token_ids or ()}
