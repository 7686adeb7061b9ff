"""Scheduling policies by name: one line per policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
from shunter.core.sched.policy import Policy
from shunter.core.types import make_from_registry

__all__ = ["POLICIES", "PREDICTIVE_POLICIES", "make_policy"]

POLICIES: dict[str, Callable[..., Policy]] = {
    "dlpm": DlpmPolicy,
    "fastswitch": FastSwitchPolicy,
    "fcfs": FcfsPolicy,
    "ltr": LtrPolicy,
    "mlfq": MlfqPolicy,
    "plas": PlasPolicy,
    "priority": PriorityPolicy,
    "sarathi": SarathiPolicy,
    "sjf": SjfPolicy,
    "vtc": VtcPolicy,
}

# the policies that read `Request.predicted_output_tokens` (a predictor is useless without one)
PREDICTIVE_POLICIES = frozenset({"ltr", "sjf"})


def make_policy(name: str, **params: Any) -> Policy:
    """Build the named policy; unknown names and parameters raise ValueError naming the valid ones."""
    return make_from_registry("scheduling policy", POLICIES, name, params)
