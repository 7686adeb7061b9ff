"""Routers by name: one line per router."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shunter.router.interface import Router
from shunter.router.policies.least_load import LeastLoadRouter
from shunter.router.policies.round_robin import RoundRobinRouter

__all__ = ["ROUTERS", "make_router"]

ROUTERS: dict[str, Callable[..., Router]] = {
    "round_robin": RoundRobinRouter,
    "least_load": LeastLoadRouter,
}


def make_router(name: str, **params: Any) -> Router:
    """Build the named router; unknown names and parameters raise ValueError naming the valid ones."""
    factory = ROUTERS.get(name)
    if factory is None:
        raise ValueError(f"unknown router {name!r}; valid: {', '.join(sorted(ROUTERS))}")
    try:
        return factory(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for router {name!r}: {exc}") from None
