"""The vLLM adapter's inputs: the policy from the environment, tags from `vllm_xargs`, the vLLM
version. Pure: no vLLM needed."""

from __future__ import annotations

import pytest

from shunter.core.sched.policies.fcfs import FcfsPolicy
from shunter.core.sched.policies.priority import PriorityPolicy
from shunter.core.sched.policies.vtc import VtcPolicy
from shunter.errors import ConfigError, RequestError
from shunter.integrations.settings import (
    RequestTags,
    check_vllm_version,
    policy_from_env,
    tags_from_xargs,
)


@pytest.mark.parametrize("version", ["0.32.0", "0.32.7", "0.32.1+cpu", "0.32.0rc1"])
def test_the_tested_series_is_accepted(version: str) -> None:
    check_vllm_version(version)


@pytest.mark.parametrize("version", ["0.31.2", "0.33.0", "1.32.0", "dev", ""])
def test_any_other_vllm_is_refused_with_the_tested_series(version: str) -> None:
    with pytest.raises(ConfigError, match=r"tested with vLLM 0\.32\.x only"):
        check_vllm_version(version)


def test_the_policy_defaults_to_fcfs() -> None:
    assert isinstance(policy_from_env({}), FcfsPolicy)
    assert isinstance(policy_from_env({"SHUNTER_POLICY": " ", "SHUNTER_POLICY_PARAMS": ""}),
                      FcfsPolicy)


def test_the_policy_and_its_params_come_from_the_environment() -> None:
    policy = policy_from_env({"SHUNTER_POLICY": "priority",
                              "SHUNTER_POLICY_PARAMS": '{"aging_s": 5, "preemption_threshold": 2}'})
    assert isinstance(policy, PriorityPolicy)
    assert (policy.aging_s, policy.preemption_threshold) == (5, 2)
    vtc = policy_from_env({"SHUNTER_POLICY": "vtc",
                           "SHUNTER_POLICY_PARAMS": '{"tenant_weights": {"gold": 2}}'})
    assert isinstance(vtc, VtcPolicy) and vtc.weight("gold") == 2


@pytest.mark.parametrize(("environ", "message"), [
    ({"SHUNTER_POLICY": "nope"},
     "SHUNTER_POLICY: unknown scheduling policy 'nope'; valid: aios_rr, dlpm, dynasor, fastswitch"),
    ({"SHUNTER_POLICY": "vtc", "SHUNTER_POLICY_PARAMS": "{aging"},
     "SHUNTER_POLICY_PARAMS is not valid JSON"),
    ({"SHUNTER_POLICY": "vtc", "SHUNTER_POLICY_PARAMS": "[1]"},
     "SHUNTER_POLICY_PARAMS must be a JSON object"),
    ({"SHUNTER_POLICY": "vtc", "SHUNTER_POLICY_PARAMS": '{"quantum": 1}'},
     "SHUNTER_POLICY_PARAMS: bad parameters for scheduling policy 'vtc'"),
    ({"SHUNTER_POLICY": "priority", "SHUNTER_POLICY_PARAMS": '{"aging_s": -1}'},
     "SHUNTER_POLICY_PARAMS: aging_s must be > 0"),
])
def test_bad_policy_settings_raise_config_errors_naming_the_variable(
        environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        policy_from_env(environ)
    assert message in str(caught.value)


def test_tags_default_when_absent() -> None:
    assert tags_from_xargs(None) == RequestTags()
    assert tags_from_xargs({"kv_transfer_params": {"x": 1}}) == RequestTags(tenant="default")


def test_tags_are_read_from_vllm_xargs() -> None:
    tags = tags_from_xargs({"tenant": "acme", "program_id": "agent-7",
                            "predicted_output_tokens": 120})
    assert tags == RequestTags(tenant="acme", program_id="agent-7", predicted_output_tokens=120.0)


@pytest.mark.parametrize(("xargs", "param"), [
    ({"tenant": 5}, "vllm_xargs.tenant"),
    ({"tenant": ""}, "vllm_xargs.tenant"),
    ({"tenant": ["a"]}, "vllm_xargs.tenant"),
    ({"program_id": 1.5}, "vllm_xargs.program_id"),
    ({"predicted_output_tokens": "many"}, "vllm_xargs.predicted_output_tokens"),
    ({"predicted_output_tokens": True}, "vllm_xargs.predicted_output_tokens"),
    ({"predicted_output_tokens": -1}, "vllm_xargs.predicted_output_tokens"),
    ({"predicted_output_tokens": float("nan")}, "vllm_xargs.predicted_output_tokens"),
])
def test_wrong_typed_tags_are_request_errors(xargs: dict[str, object], param: str) -> None:
    with pytest.raises(RequestError) as caught:
        tags_from_xargs(xargs)
    assert caught.value.param == param and caught.value.status_code == 400


def test_a_policy_that_recalls_running_requests_is_refused_inside_vllm() -> None:
    with pytest.raises(ConfigError, match="SHUNTER_POLICY: policy 'length_grouped' sends "
                                          "running requests back"):
        policy_from_env({"SHUNTER_POLICY": "length_grouped"})


def test_a_policy_that_stops_requests_from_probes_is_refused_inside_vllm() -> None:
    with pytest.raises(ConfigError, match="SHUNTER_POLICY: policy 'dynasor' ends requests from "
                                          "probes of their progress"):
        policy_from_env({"SHUNTER_POLICY": "dynasor"})
