"""Engine-level scheduling policies; each is one file plus one line in `sched/registry.py`."""

from shunter.core.sched.policies.fcfs import FcfsPolicy
from shunter.core.sched.policies.ltr import LtrPolicy
from shunter.core.sched.policies.mlfq import MlfqPolicy
from shunter.core.sched.policies.priority import PriorityPolicy
from shunter.core.sched.policies.sarathi import SarathiPolicy
from shunter.core.sched.policies.sjf import SjfPolicy

__all__ = ["FcfsPolicy", "LtrPolicy", "MlfqPolicy", "PriorityPolicy", "SarathiPolicy", "SjfPolicy"]
