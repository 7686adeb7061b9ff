"""Engine-level scheduling policies; each is one file plus one line in `sched/registry.py`."""

from shunter.core.sched.policies.fcfs import FcfsPolicy
from shunter.core.sched.policies.priority import PriorityPolicy

__all__ = ["FcfsPolicy", "PriorityPolicy"]
