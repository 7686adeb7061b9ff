"""Expert routing profiles: each request's spread over a mixture-of-experts model's experts.

With a router decoupled from the backbone (Read-ME, Cai et al., NeurIPS 2024: one pre-gating
router run before the model, for every layer), a request's experts are known before it runs,
and a request's tokens concentrate on a subset of them. `ExpertRouting` draws such profiles
(`core.types.ExpertProfile`), seeded:

- `num_clusters` topics, each a preference over the experts drawn from a symmetric
  Dirichlet(`cluster_concentration`): below 1, a topic leans on a few experts;
- each request picks a topic uniformly and draws its own profile around it,
  Dirichlet(`request_concentration` x the topic's preference): larger values keep requests
  closer to their topic.

What the studies say, and what is assumed here. Read-ME reports temporal locality in its
pre-gating router's choices (the basis of its expert-aware batching and Belady-style expert
cache: 88% hits with room for 5 experts, as summaries of the paper give it). ELDR (arXiv
2607.00466, PD-disaggregated MoE serving) reports that expert activation is structured by
domain (task, language) and predictable from a request's prefill activations (correlation
0.70-0.92, as summarised), on Qwen3-30B-A3B, gpt-oss-120b and Gemma-4. Mixtral's own routing
analysis (Jiang et al., 2024, section 5) finds consecutive tokens often routed to the same
experts but little topic specialisation per expert. The defaults (4 topics, concentration 0.3,
per-request concentration 20) are therefore an assumption, not a fit: they make topics
distinct and requests close to their topic, the setting Read-ME's scheduling is built for.

Requests without a profile are routed uniformly (the cost model's E(1 - (1 - k / E)^T)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from shunter.core.types import ExpertProfile, RequestSpec
from shunter.errors import ConfigError
from shunter.workload.arrival import seeded_rng

__all__ = ["ExpertRouting", "expert_profiles", "with_expert_profiles"]

STREAM_EXPERTS = 7  # the seed stream of topics and profiles
# smallest Dirichlet draw kept (below it numpy's gamma draws underflow to 0 for tiny alphas,
# which is harmless, but a floor keeps every expert reachable, as a softmax router does)
MIN_WEIGHT = 1e-9


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpertRouting:
    """How requests' expert profiles are drawn (see the module docstring)."""

    num_experts: int
    num_clusters: int = 4
    cluster_concentration: float = 0.3
    request_concentration: float = 20.0

    def __post_init__(self) -> None:
        for name in ("num_experts", "num_clusters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("cluster_concentration", "request_concentration"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def expert_profiles(num_requests: int, routing: ExpertRouting, seed: int
                    ) -> tuple[list[ExpertProfile], list[int]]:
    """`num_requests` profiles and the topic each was drawn from, the same for the same seed."""
    rng = seeded_rng(seed, STREAM_EXPERTS)
    num_experts = routing.num_experts
    topics = rng.dirichlet([routing.cluster_concentration] * num_experts, routing.num_clusters)
    topics = np.maximum(topics, MIN_WEIGHT)
    chosen = rng.integers(0, routing.num_clusters, num_requests)
    profiles = []
    for topic in chosen:
        draw = rng.dirichlet(routing.request_concentration * topics[topic] / topics[topic].sum())
        profiles.append(ExpertProfile.normalized(np.maximum(draw, MIN_WEIGHT).tolist()))
    return profiles, [int(t) for t in chosen]


def with_expert_profiles(specs: Sequence[RequestSpec], routing: ExpertRouting, seed: int
                         ) -> list[RequestSpec]:
    """`specs`, each with a drawn expert profile (in order: the i-th spec gets the i-th draw)."""
    profiles, _ = expert_profiles(len(specs), routing, seed)
    return [replace(spec, expert_profile=p) for spec, p in zip(specs, profiles, strict=True)]
