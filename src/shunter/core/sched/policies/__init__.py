"""Engine-level scheduling policies; each is one file plus one line in `sched/registry.py`."""

from shunter.core.sched.policies.dlpm import DlpmPolicy
from shunter.core.sched.policies.fastswitch import FastSwitchPolicy
from shunter.core.sched.policies.fcfs import FcfsPolicy
from shunter.core.sched.policies.ltr import LtrPolicy
from shunter.core.sched.policies.mlfq import MlfqPolicy
from shunter.core.sched.policies.plas import PlasPolicy
from shunter.core.sched.policies.priority import PriorityPolicy
from shunter.core.sched.policies.sarathi import SarathiPolicy
from shunter.core.sched.policies.sjf import SjfPolicy
from shunter.core.sched.policies.vtc import VtcPolicy

__all__ = [
    "DlpmPolicy",
    "FastSwitchPolicy",
    "FcfsPolicy",
    "LtrPolicy",
    "MlfqPolicy",
    "PlasPolicy",
    "PriorityPolicy",
    "SarathiPolicy",
    "SjfPolicy",
    "VtcPolicy",
]
