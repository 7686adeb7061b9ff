"""A replica's speed as a `ReplicaView` carries it, from a cost model: one definition for every
owner of replicas that has a cost model (the simulator's replicas, and a live gateway backend
configured with a `shunter profile` file).

    prefill_tokens_per_s = token budget / step time of one prefill chunk of the whole budget
    decode_step_s        = step time of a decode step of the running requests (at least one)
                           over their KV tokens
"""

from __future__ import annotations

from pathlib import Path

from shunter.core.types import StepShape
from shunter.sim.cost.interface import CostModel
from shunter.sim.cost.profile import ProfileCostModel, load_profile

__all__ = ["ReplicaSpeeds", "profile_speeds"]


class ReplicaSpeeds:
    """The speed fields of a replica's views, from its cost model and token budget."""

    __slots__ = ("cost_model", "prefill_tokens_per_s")

    def __init__(self, cost_model: CostModel, max_num_batched_tokens: int) -> None:
        if max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {max_num_batched_tokens}")
        self.cost_model = cost_model
        budget = max_num_batched_tokens
        # prefill throughput at a full token budget, for routers that price queued prompts
        self.prefill_tokens_per_s = budget / cost_model.step_time_s(
            StepShape(prefill_chunks=((budget, 0),)))

    def decode_step_s(self, num_running: int, num_running_tokens: int) -> float:
        """Wall time of one decode step of `num_running` requests holding that many KV tokens."""
        return self.cost_model.step_time_s(StepShape(num_decode_requests=max(num_running, 1),
                                                     num_decode_context_tokens=num_running_tokens))


def profile_speeds(path: str | Path, max_num_batched_tokens: int) -> ReplicaSpeeds:
    """The speeds a `shunter profile` file gives a replica with this token budget; ConfigError
    naming the file if it is missing or not a profile."""
    return ReplicaSpeeds(ProfileCostModel(load_profile(path)), max_num_batched_tokens)
