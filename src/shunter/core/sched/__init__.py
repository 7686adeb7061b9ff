"""The engine-level scheduler, its messages, policies and registry."""

from shunter.core.sched.config import SchedulerConfig
from shunter.core.sched.interface import (
    NewRequestData,
    RequestOutput,
    ScheduledChunk,
    Scheduler,
    SchedulerOutput,
    StepResult,
)
from shunter.core.sched.registry import POLICIES, make_policy
from shunter.core.sched.scheduler import CoreScheduler

__all__ = [
    "POLICIES",
    "CoreScheduler",
    "NewRequestData",
    "RequestOutput",
    "ScheduledChunk",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "StepResult",
    "make_policy",
]
