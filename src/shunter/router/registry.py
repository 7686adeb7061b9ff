"""Routers by name: one line per router."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shunter.core.types import make_from_registry
from shunter.router.interface import Router
from shunter.router.policies.cost import CostRouter
from shunter.router.policies.d2lpm import D2lpmRouter
from shunter.router.policies.intelligent import IntelligentRouter
from shunter.router.policies.least_load import LeastLoadRouter
from shunter.router.policies.llumnix import LlumnixRouter
from shunter.router.policies.lora_affinity import LoraAffinityRouter
from shunter.router.policies.power_of_two import PowerOfTwoRouter
from shunter.router.policies.prefix_affinity import PrefixAffinityRouter
from shunter.router.policies.random_choice import RandomRouter
from shunter.router.policies.round_robin import RoundRobinRouter
from shunter.router.policies.session import SessionRouter
from shunter.router.policies.tetriinfer import TetriInferRouter

__all__ = ["ROUTERS", "make_router"]

ROUTERS: dict[str, Callable[..., Router]] = {
    "round_robin": RoundRobinRouter,
    "least_load": LeastLoadRouter,
    "random": RandomRouter,
    "power_of_two": PowerOfTwoRouter,
    "prefix_affinity": PrefixAffinityRouter,
    "cost": CostRouter,
    "session": SessionRouter,
    "d2lpm": D2lpmRouter,
    "llumnix": LlumnixRouter,
    "intelligent": IntelligentRouter,
    "tetriinfer": TetriInferRouter,
    "lora_affinity": LoraAffinityRouter,
}


def make_router(name: str, **params: Any) -> Router:
    """Build the named router; unknown names and parameters raise ValueError naming the valid ones."""
    return make_from_registry("router", ROUTERS, name, params)
