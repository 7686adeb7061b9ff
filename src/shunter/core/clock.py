"""The Clock protocol. Core code never reads the wall clock; it is handed a Clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Clock", "ManualClock"]


class Clock(Protocol):
    """A source of the current time in seconds."""

    def now(self) -> float:
        """Seconds since the runtime's epoch (virtual in the simulator, wall in the engine)."""
        ...


@dataclass(slots=True)
class ManualClock:
    """A clock that moves only when told to: the simulator's virtual time, and tests'."""

    time_s: float = 0.0

    def now(self) -> float:
        return self.time_s

    def advance_to(self, time_s: float) -> None:
        assert time_s >= self.time_s, f"time runs backwards: {time_s} < {self.time_s}"
        self.time_s = time_s
