"""Synthetic workloads: `generate(SyntheticWorkload(...), seed) -> list[RequestSpec]`.

A request gets, independently: an arrival from the arrival process (`arrival`, `rate`, `cv`),
a prompt and output length (two `LengthDistribution`s, or pairs sampled jointly with
replacement from a trace or length file via `length_file`), a tenant (drawn by `tenants`
shares) and a request class (drawn by weight: priority, TTFT/TPOT SLOs).

`shared_prefix` makes a multi-tenant shared-prefix workload: every tenant owns
`num_prefixes_per_tenant` system prompts (lengths from `prefix_tokens`, rounded down to whole
hash blocks) and each request starts with one of its tenant's prompts (popularity ~
1/(rank+1)^popularity_alpha) followed by `prompt_tokens` tokens of its own. The prefix is
expressed by `hash_ids`: equal ids for the system prompt, fresh random 62-bit ids for the rest
(so prefixes from different seeds never collide). Without it, requests share nothing.

Each random choice has its own stream under `seed`, so changing, e.g., the tenant shares keeps
the arrivals and lengths. Same config and seed give identical specs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from shunter.core.types import DEFAULT_BLOCK_SIZE, DEFAULT_TENANT, RequestSpec
from shunter.workload.arrival import (
    ARRIVAL_PROCESSES,
    STREAM_ARRIVALS,
    arrival_times,
    seeded_rng,
)
from shunter.workload.length_dist import LengthDistribution
from shunter.workload.loaders import load_workload

__all__ = ["RequestClass", "SharedPrefix", "SyntheticWorkload", "generate", "merge_workloads"]

_STREAM_LENGTHS = 10
_STREAM_TENANTS = 11
_STREAM_CLASSES = 12
_STREAM_PREFIXES = 13
_MAX_HASH_ID = 2**62


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestClass:
    """A kind of request, drawn with probability weight / total: its priority and SLOs."""

    weight: float = 1.0
    priority: int = 0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None

    def __post_init__(self) -> None:
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"class weight must be a finite number > 0, got {self.weight}")
        for name in ("ttft_slo_s", "tpot_slo_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedPrefix:
    """Per-tenant system prompts reused across requests (see the module docstring)."""

    num_prefixes_per_tenant: int = 4
    prefix_tokens: LengthDistribution = field(
        default_factory=lambda: LengthDistribution(kind="fixed", mean_tokens=1024))
    popularity_alpha: float = 1.0  # 0 = every prompt equally likely
    hash_block_size: int = DEFAULT_BLOCK_SIZE

    def __post_init__(self) -> None:
        if self.num_prefixes_per_tenant < 1:
            raise ValueError(f"num_prefixes_per_tenant must be >= 1, got {self.num_prefixes_per_tenant}")
        if not (self.popularity_alpha >= 0 and math.isfinite(self.popularity_alpha)):
            raise ValueError(f"popularity_alpha must be a finite number >= 0, got {self.popularity_alpha}")
        if self.hash_block_size < 1:
            raise ValueError(f"hash_block_size must be >= 1, got {self.hash_block_size}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SyntheticWorkload:
    """What to generate; defaults are a Poisson stream of 512-in / 128-out requests."""

    num_requests: int
    rate: float  # requests/s; math.inf puts every request at t = 0
    arrival: str = "poisson"  # a name in ARRIVAL_PROCESSES
    cv: float = 1.0  # inter-arrival coefficient of variation (gamma, weibull)
    prompt_tokens: LengthDistribution = field(
        default_factory=lambda: LengthDistribution(kind="fixed", mean_tokens=512))
    output_tokens: LengthDistribution = field(
        default_factory=lambda: LengthDistribution(kind="fixed", mean_tokens=128))
    length_file: str | None = None  # sample (prompt, output) pairs from this trace instead
    length_file_format: str | None = None  # None: detect it
    max_output_tokens: int | None = None  # the user's cap; true outputs longer are cut to it
    tenants: dict[str, float] = field(default_factory=lambda: {DEFAULT_TENANT: 1.0})
    classes: tuple[RequestClass, ...] = (RequestClass(),)
    shared_prefix: SharedPrefix | None = None

    def __post_init__(self) -> None:
        if self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0 requests/s (inf for all at once), got {self.rate}")
        if self.arrival not in ARRIVAL_PROCESSES:
            raise ValueError(f"unknown arrival process {self.arrival!r}; valid: "
                             f"{', '.join(ARRIVAL_PROCESSES)}")
        if not (self.cv > 0 and math.isfinite(self.cv)):
            raise ValueError(f"cv must be a finite number > 0, got {self.cv}")
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise ValueError(f"max_output_tokens must be >= 1, got {self.max_output_tokens}")
        if not self.tenants:
            raise ValueError("tenants must name at least one tenant")
        for tenant, share in self.tenants.items():
            if not (share > 0 and math.isfinite(share)):
                raise ValueError(f"tenant {tenant!r}: share must be a finite number > 0, got {share}")
        if not self.classes:
            raise ValueError("classes must hold at least one RequestClass")


def _choose(rng: np.random.Generator, weights: list[float], n: int) -> list[int]:
    """`n` indexes drawn with probability weight / sum (all 0 without drawing if one choice)."""
    if len(weights) == 1:
        return [0] * n
    p = np.asarray(weights, dtype=np.float64)
    return rng.choice(len(weights), size=n, p=p / p.sum()).tolist()


def _lengths(config: SyntheticWorkload, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    n = config.num_requests
    if config.length_file is None:
        return config.prompt_tokens.sample(rng, n), config.output_tokens.sample(rng, n)
    source = load_workload(config.length_file, config.length_file_format)
    picks = rng.integers(0, len(source), n).tolist()
    return ([source[i].num_prompt_tokens for i in picks],
            [source[i].num_output_tokens for i in picks])


def _prefix_hash_ids(config: SyntheticWorkload, prefix: SharedPrefix, tenant_of: list[int],
                     prompts: list[int], rng: np.random.Generator) -> tuple[list[int], list[tuple[int, ...]]]:
    """Prompt lengths (prefix + own tokens) and hash ids for the shared-prefix workload."""
    bs = prefix.hash_block_size
    num_tenants, k = len(config.tenants), prefix.num_prefixes_per_tenant
    prefix_blocks = [max(1, n // bs) for n in prefix.prefix_tokens.sample(rng, num_tenants * k)]
    prefix_ids = [tuple(rng.integers(0, _MAX_HASH_ID, m).tolist()) for m in prefix_blocks]
    popularity = [1.0 / (rank + 1) ** prefix.popularity_alpha for rank in range(k)]
    ranks = _choose(rng, popularity, len(prompts))
    own_blocks = [-(-n // bs) for n in prompts]
    fresh = rng.integers(0, _MAX_HASH_ID, sum(own_blocks)).tolist()
    lengths, hash_ids = [], []
    start = 0
    for tenant, rank, own, num_own_blocks in zip(tenant_of, ranks, prompts, own_blocks, strict=True):
        which = tenant * k + rank
        lengths.append(prefix_blocks[which] * bs + own)
        hash_ids.append(prefix_ids[which] + tuple(fresh[start:start + num_own_blocks]))
        start += num_own_blocks
    return lengths, hash_ids


def generate(config: SyntheticWorkload, seed: int = 0) -> list[RequestSpec]:
    """The requests `config` describes, "r0", "r1", ... sorted by arrival (seeded)."""
    n = config.num_requests
    arrivals = arrival_times(n, seeded_rng(seed, STREAM_ARRIVALS), config.rate,
                             process=config.arrival, cv=config.cv)
    prompts, outputs = _lengths(config, seeded_rng(seed, _STREAM_LENGTHS))
    if config.max_output_tokens is not None:
        outputs = [min(out, config.max_output_tokens) for out in outputs]
    tenant_names = list(config.tenants)
    tenant_of = _choose(seeded_rng(seed, _STREAM_TENANTS), list(config.tenants.values()), n)
    class_of = _choose(seeded_rng(seed, _STREAM_CLASSES), [c.weight for c in config.classes], n)
    hash_ids: list[tuple[int, ...] | None] = [None] * n
    block_size = DEFAULT_BLOCK_SIZE
    if config.shared_prefix is not None:
        block_size = config.shared_prefix.hash_block_size
        prompts, hash_ids = _prefix_hash_ids(  # type: ignore[assignment]
            config, config.shared_prefix, tenant_of, prompts, seeded_rng(seed, _STREAM_PREFIXES))
    specs = []
    for i in range(n):
        cls = config.classes[class_of[i]]
        specs.append(RequestSpec(
            request_id=f"r{i}", arrival_s=arrivals[i], num_prompt_tokens=prompts[i],
            num_output_tokens=outputs[i], max_output_tokens=config.max_output_tokens,
            tenant=tenant_names[tenant_of[i]], priority=cls.priority,
            ttft_slo_s=cls.ttft_slo_s, tpot_slo_s=cls.tpot_slo_s, hash_ids=hash_ids[i],
            hash_block_size=block_size))
    return specs


def merge_workloads(*workloads: Iterable[RequestSpec]) -> list[RequestSpec]:
    """One workload from several (e.g. one generated per tenant): stably sorted by arrival,
    renumbered "r0", "r1", ... so ids stay unique."""
    merged = sorted((spec for workload in workloads for spec in workload),
                    key=lambda spec: spec.arrival_s)
    return [replace(spec, request_id=f"r{i}") for i, spec in enumerate(merged)]
