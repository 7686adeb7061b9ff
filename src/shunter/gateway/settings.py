"""Which core policy orders requests, in-process engines and at the gateway's queue (the
`[scheduler]` table of a gateway config, `shunter serve --policy`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shunter.core.predict.registry import PREDICTORS
from shunter.core.sched.gateway_queue import gateway_refusal
from shunter.core.sched.policy import Policy
from shunter.core.sched.registry import PREDICTIVE_POLICIES, make_policy

__all__ = ["DEFAULT_ENGINE_POLICY", "DEFAULT_GATEWAY_POLICY", "PASS_THROUGH_GATEWAY_POLICY",
           "SchedulerSettings", "named_policy"]

DEFAULT_ENGINE_POLICY = "fcfs"  # vLLM's default
DEFAULT_GATEWAY_POLICY = "vtc"  # tenants share a saturated gateway fairly
# what the gateway's queue runs when `policy` needs an engine and in-process engines run it:
# arrival order, leaving the order to the engines
PASS_THROUGH_GATEWAY_POLICY = "fcfs"


def named_policy(name: str, params: dict[str, Any], what: str) -> Policy:
    """`name`'s policy with `params`; ValueError starting with `what` if they are bad."""
    try:
        return make_policy(name, **params)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerSettings:
    """Which core policy orders requests, in the in-process engines and at the gateway's queue.

    `policy` (with `params`) runs in every in-process engine and at the gateway's queue (the
    requests waiting for a free backend slot). A policy that needs an engine (preemption, a
    token budget: mlfq, fastswitch, sarathi) runs in the engines, the gateway's queue keeping
    arrival order; without in-process engines it is refused. With no policy the engines run
    fcfs and the gateway's queue vtc. `gateway_policy` (`gateway_params`) sets the gateway's
    queue apart. `predictor` predicts output lengths at the gateway, passed on to in-process
    engines; `predictor_params` may name a `model_path` (`shunter train-predictor`)."""

    policy: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    predictor: str | None = None
    predictor_params: dict[str, Any] = field(default_factory=dict)
    gateway_policy: str | None = None
    gateway_params: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.policy is None and self.params:
            raise ValueError("params are given but no policy")
        if self.gateway_policy is None and self.gateway_params is not None:
            raise ValueError("gateway_params are given but no gateway_policy")
        if self.policy is not None:
            named_policy(self.policy, self.params, "policy")
        if self.gateway_policy is not None:
            refusal = gateway_refusal(named_policy(self.gateway_policy, self.gateway_params or {},
                                              "gateway_policy"))
            if refusal is not None:
                raise ValueError(f"gateway_policy: {refusal}")
        if self.predictor is not None:
            factory = PREDICTORS.get(self.predictor)
            if factory is None:
                raise ValueError(f"unknown predictor {self.predictor!r}; valid: "
                                 f"{', '.join(sorted(PREDICTORS))}")
            if getattr(factory(), "is_oracle", False):
                raise ValueError(f"predictor {self.predictor!r} reads the true output length, "
                                 "which only the simulator knows; live traffic needs a real "
                                 "predictor (learned, trained with `shunter train-predictor`)")
            if not {self.policy, self.gateway_policy} & PREDICTIVE_POLICIES:
                raise ValueError(f"a predictor is read only by the policies "
                                 f"{', '.join(sorted(PREDICTIVE_POLICIES))}; "
                                 f"{self.policy or 'the default policies'} would ignore it")
            if modelled := sorted(k for k, v in self.predictor_params.items()
                                  if k.endswith("_cost_s") and v):  # skip_* predictors
                raise ValueError(f"predictor_params {', '.join(modelled)}: what a prediction "
                                 "costs is a simulator model; live it costs its real time")
        elif self.predictor_params:
            raise ValueError("predictor_params are given but no predictor")

    @property
    def engine_policy(self) -> tuple[str, dict[str, Any]]:
        """The policy in-process engines run, with its parameters."""
        return (self.policy, self.params) if self.policy else (DEFAULT_ENGINE_POLICY, {})

    def gateway_tier(self, *, has_engines: bool) -> tuple[str, dict[str, Any]]:
        """The policy the gateway's queue runs, with its parameters; ValueError if `policy`
        can run nowhere here (it needs an engine and there is none in this process)."""
        if self.gateway_policy is not None:
            return self.gateway_policy, dict(self.gateway_params or {})
        if self.policy is None:
            return DEFAULT_GATEWAY_POLICY, {}
        refusal = gateway_refusal(named_policy(self.policy, self.params, "policy"))
        if refusal is None:
            return self.policy, dict(self.params)
        if not has_engines:
            raise ValueError(f"{refusal}; this gateway has no in-process engine backend, so "
                             "nothing here can run it")
        return PASS_THROUGH_GATEWAY_POLICY, {}
