"""Scheduling policies by name: one line per policy; and how one table of policy parameters
is split between several policies (`scope_policy_params`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shunter.core.sched.policies.aios_rr import AiosRrPolicy
from shunter.core.sched.policies.dlpm import DlpmPolicy
from shunter.core.sched.policies.dynasor import DynasorPolicy
from shunter.core.sched.policies.fastswitch import FastSwitchPolicy
from shunter.core.sched.policies.fcfs import FcfsPolicy
from shunter.core.sched.policies.length_grouped import LengthGroupedPolicy
from shunter.core.sched.policies.lpm import LpmPolicy
from shunter.core.sched.policies.ltr import LtrPolicy
from shunter.core.sched.policies.mlfq import MlfqPolicy
from shunter.core.sched.policies.parrot import ParrotPolicy
from shunter.core.sched.policies.plas import PlasPolicy
from shunter.core.sched.policies.priority import PriorityPolicy
from shunter.core.sched.policies.read_me import ReadMePolicy
from shunter.core.sched.policies.sarathi import SarathiPolicy
from shunter.core.sched.policies.sjf import SjfPolicy
from shunter.core.sched.policies.skippredict import SkipPredictPolicy
from shunter.core.sched.policies.vtc import VtcPolicy
from shunter.core.sched.policy import Policy
from shunter.core.types import make_from_registry

__all__ = ["POLICIES", "PREDICTIVE_POLICIES", "make_policy", "policy_param_names",
           "scope_policy_params"]

POLICIES: dict[str, Callable[..., Policy]] = {
    "aios_rr": AiosRrPolicy,
    "dlpm": DlpmPolicy,
    "dynasor": DynasorPolicy,
    "fastswitch": FastSwitchPolicy,
    "fcfs": FcfsPolicy,
    "length_grouped": LengthGroupedPolicy,
    "lpm": LpmPolicy,
    "ltr": LtrPolicy,
    "mlfq": MlfqPolicy,
    "parrot": ParrotPolicy,
    "plas": PlasPolicy,
    "priority": PriorityPolicy,
    "read_me": ReadMePolicy,
    "sarathi": SarathiPolicy,
    "sjf": SjfPolicy,
    "skippredict": SkipPredictPolicy,
    "vtc": VtcPolicy,
}

# the policies that read `Request.predicted_output_tokens` (a predictor is useless without one)
PREDICTIVE_POLICIES = frozenset({"length_grouped", "ltr", "sjf", "skippredict"})


def make_policy(name: str, **params: Any) -> Policy:
    """Build the named policy; unknown names and parameters raise ValueError naming the valid ones."""
    return make_from_registry("scheduling policy", POLICIES, name, params)


def policy_param_names(name: str) -> tuple[str, ...]:
    """The parameters the named policy takes (what `make_policy`'s error lists as valid)."""
    if name not in POLICIES:
        raise ValueError(f"unknown scheduling policy {name!r}; valid: {', '.join(sorted(POLICIES))}")
    return tuple(inspect.signature(POLICIES[name]).parameters)


def scope_policy_params(names: Sequence[str], params: Mapping[str, Any]
                        ) -> dict[str, dict[str, Any]]:
    """Each policy of `names` (the policies a run, a comparison or a sweep runs) with its own
    parameters out of one table.

    A key naming a policy holds that policy's own table (`{"priority": {"aging_s": 30}}`),
    checked against its parameters even when it is not run; any other key is shared and goes
    to every policy of `names` that takes it (a policy's own table wins). A shared key that
    none of `names` takes is a ValueError naming it and the policies that do take it: a
    parameter is never dropped unread.
    """
    for name in names:
        policy_param_names(name)  # unknown names fail first
    own: dict[str, dict[str, Any]] = {}
    shared: dict[str, Any] = {}
    for key, value in params.items():
        if key not in POLICIES:
            shared[key] = value
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"policy parameters: {key!r} names a policy, so its value must be a "
                             f"table of {key}'s parameters, got {value!r}")
        valid = policy_param_names(key)
        unknown = sorted(set(value) - set(valid))
        if unknown:
            raise ValueError(f"policy parameters for {key!r}: {key} takes no {unknown[0]!r}; "
                             f"valid: {', '.join(valid) or 'none'}")
        own[key] = dict(value)
    taken = {name: policy_param_names(name) for name in names}
    for key in shared:
        if not any(key in valid for valid in taken.values()):
            raise ValueError(_untaken(key, taken))
    return {name: {k: v for k, v in shared.items() if k in taken[name]} | own.get(name, {})
            for name in names}


def _untaken(key: str, taken: Mapping[str, Sequence[str]]) -> str:
    takers = [n for n in sorted(POLICIES) if key in policy_param_names(n)]
    if takers:
        hint = (f"only {', '.join(takers)} take it; nest it under the policy's name "
                f"({takers[0]}: {{{key}: ...}}) to give it to that policy alone")
    else:
        hint = "no policy takes it; valid: " + "; ".join(
            f"{name}: {', '.join(valid) or 'none'}" for name, valid in taken.items())
    return (f"policy parameter {key!r} is taken by none of the policies run "
            f"({', '.join(taken)}): {hint}")
