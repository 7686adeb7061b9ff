"""Sampling parameters and the batched sampler (greedy, temperature, top-k, top-p, seeds).

Each request draws from its own `torch.Generator`, seeded by the user or from the engine's
injected RNG, so a seeded request samples the same tokens whatever else shares its batch.
Random choice uses the exponential-race form of the Gumbel trick: argmax(p / E), E ~ Exp(1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from shunter.errors import RequestError

__all__ = ["SamplingParams", "Sampler", "SamplingState"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """How one request picks tokens and when it stops (OpenAI semantics)."""

    max_tokens: int | None = None  # None: up to the model's context length
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int | None = None  # None: no cut
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise RequestError(f"max_tokens must be >= 1, got {self.max_tokens}", param="max_tokens")
        if not 0.0 <= self.temperature <= 100.0:
            raise RequestError(f"temperature must be in [0, 100], got {self.temperature}",
                               param="temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}", param="top_p")
        if self.top_k is not None and self.top_k < 1:
            raise RequestError(f"top_k must be >= 1, got {self.top_k}", param="top_k")
        if any(not s for s in self.stop):
            raise RequestError("stop strings must not be empty", param="stop")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(slots=True)
class SamplingState:
    """A request's sampling parameters plus its private random stream."""

    params: SamplingParams
    generator: torch.Generator | None  # None for greedy requests


class Sampler:
    """Picks one token per logits row; rows and states are given in the same order."""

    def sample(self, logits: torch.Tensor, states: Sequence[SamplingState]) -> list[int]:
        assert logits.shape[0] == len(states), "one sampling state per logits row"
        if not states:
            return []
        tokens = logits.argmax(dim=-1).tolist()
        random_rows = [i for i, s in enumerate(states) if not s.params.is_greedy]
        if random_rows:
            # Per-request generators live on the CPU, so random rows are drawn there.
            rows = logits[random_rows].float().cpu()
            probs = self._probabilities(rows, [states[i].params for i in random_rows])
            for row, i in enumerate(random_rows):
                gen = states[i].generator
                noise = torch.empty_like(probs[row]).exponential_(generator=gen)
                tokens[i] = int((probs[row] / noise).argmax())
        return tokens

    @staticmethod
    def _probabilities(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
        temps = torch.tensor([p.temperature for p in params], dtype=logits.dtype)
        logits = logits / temps.unsqueeze(1)
        if any(p.top_k is not None for p in params):
            vocab = logits.shape[1]
            ks = torch.tensor([min(p.top_k or vocab, vocab) for p in params])
            kth = logits.sort(dim=-1, descending=True).values.gather(1, (ks - 1).unsqueeze(1))
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(dim=-1)
        if any(p.top_p < 1.0 for p in params):
            top_ps = torch.tensor([p.top_p for p in params], dtype=probs.dtype)
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_ps.unsqueeze(1)
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs)
        return probs
