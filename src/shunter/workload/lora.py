"""LoRA adapters for a workload: each request names one of `num_adapters` adapters, drawn
with skewed popularity.

Multi-adapter serving papers evaluate on power-law adapter popularity: S-LoRA (Sheng et al.,
MLSys 2024, section 7.1) draws each request's adapter from a power law of exponent alpha
(0.1-1 in its sweeps, 1 the default of its synthetic traces), Punica (Chen et al., MLSys
2024, section 7) compares "Distinct", "Uniform", "Skewed" (Zipf 1.5) and "Identical"
popularity. Here adapter k (0-based, "lora-k") is chosen with probability proportional to
1 / (k + 1)^zipf: 0 is uniform, 1 the usual Zipf. The draw has its own seed stream, so adding
adapters to a trace keeps its arrivals and lengths.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np

from shunter.core.types import RequestSpec, check_number
from shunter.workload.arrival import seeded_rng

__all__ = ["DEFAULT_LORA_ZIPF", "STREAM_LORAS", "assign_loras", "lora_name", "lora_popularity"]

STREAM_LORAS = 8  # the seed stream of adapter choices (0-2 arrivals, rows, shapes; 7 experts)
DEFAULT_LORA_ZIPF = 1.0  # S-LoRA's default power-law exponent


def lora_name(index: int) -> str:
    """The adapter id of the `index`-th most popular adapter."""
    return f"lora-{index}"


def lora_popularity(num_adapters: int, zipf: float = DEFAULT_LORA_ZIPF) -> np.ndarray:
    """Each adapter's probability, most popular first: 1 / (k + 1)^zipf, normalized."""
    if type(num_adapters) is not int or num_adapters < 1:
        raise ValueError(f"num_adapters must be a whole number >= 1, got {num_adapters!r}")
    check_number("lora zipf", zipf, ge=0)
    weights = 1.0 / np.arange(1, num_adapters + 1, dtype=np.float64) ** zipf
    return weights / weights.sum()


def assign_loras(specs: Iterable[RequestSpec], num_adapters: int, *,
                 zipf: float = DEFAULT_LORA_ZIPF, seed: int = 0) -> list[RequestSpec]:
    """`specs` with each request's `lora_id` drawn from `num_adapters` adapters of Zipf
    popularity (replacing any adapter the trace named). Same inputs and seed, same result."""
    specs = list(specs)
    probs = lora_popularity(num_adapters, zipf)
    picks = seeded_rng(seed, STREAM_LORAS).choice(num_adapters, size=len(specs), p=probs)
    return [replace(spec, lora_id=lora_name(int(k))) for spec, k in zip(specs, picks, strict=True)]
