"""What a cluster topology (migration, disaggregation) asks of the cluster that runs it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from shunter.core.clock import Clock
from shunter.sim.replica import SimReplica

__all__ = ["ClusterOps"]


class ClusterOps(Protocol):
    """The cluster's two services to a topology: step boundaries and timers."""

    @property
    def clock(self) -> Clock: ...

    def at_boundary(self, replica: SimReplica, op: Callable[[], None]) -> None:
        """Run `op` when `replica` is between steps (now if idle, else after the step in
        flight, whose run is cut short), then let the replica start its next step."""
        ...

    def set_timer(self, at_s: float, kind: str, key: int) -> None:
        """Deliver `Timer(kind, key)` to the topology that owns `kind` at `at_s`."""
        ...
