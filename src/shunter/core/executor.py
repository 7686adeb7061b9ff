"""The Executor protocol: the one seam where the simulator and the engine differ."""

from __future__ import annotations

from typing import Protocol

from shunter.core.sched.interface import SchedulerOutput, StepResult

__all__ = ["Executor"]


class Executor(Protocol):
    """Runs one scheduled step: predicted by a cost model, or on a real model."""

    def execute(self, output: SchedulerOutput) -> StepResult:
        """Execute the step and report its duration, sampled tokens and stops."""
        ...
