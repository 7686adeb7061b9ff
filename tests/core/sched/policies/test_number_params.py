"""Every number a policy takes from its params (policy_params, [gateway] params, --gateway-params)
refuses NaN and infinities with an error naming the parameter, as out-of-range values do.
`not x > 0` catches NaN where `x <= 0` did not; infinities got through both."""

from __future__ import annotations

import math

import pytest

from shunter.core.predict.registry import make_predictor
from shunter.core.sched.registry import make_policy

# (policy, parameter): every float parameter, and the int ones a scenario may give as floats
PARAMS = [
    ("dlpm", "quantum"), ("dlpm", "max_candidates"), ("dlpm", "input_weight"),
    ("dlpm", "output_weight"),
    ("fastswitch", "quantum_tokens"),
    ("ltr", "aging_s"), ("ltr", "unknown_score"),
    ("mlfq", "quantum_growth"), ("mlfq", "promote_s"), ("mlfq", "preemption_threshold"),
    ("mlfq", "base_quantum_tokens"),
    ("plas", "first_level_service"), ("plas", "level_ratio"), ("plas", "aging_s"),
    ("plas", "input_weight"), ("plas", "output_weight"),
    ("priority", "aging_s"), ("priority", "preemption_threshold"),
    ("sarathi", "tbt_slo_s"),
    ("sjf", "aging_tokens_per_s"), ("sjf", "unknown_output_tokens"),
    ("vtc", "input_weight"), ("vtc", "output_weight"),
]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("policy, param", PARAMS)
def test_policy_parameters_refuse_nan_and_infinities(policy, param, value):
    with pytest.raises(ValueError, match=rf"{param} must be .*got {value}"):
        make_policy(policy, **{param: value})


@pytest.mark.parametrize("policy", ["vtc", "dlpm"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_tenant_weights_refuse_nan_and_infinities(policy, value):
    with pytest.raises(ValueError, match=f"tenant weight for 'b' must be > 0 and finite, got {value}"):
        make_policy(policy, tenant_weights={"a": 2.0, "b": value})


def test_mlfq_prompt_limits_refuse_nan():
    with pytest.raises(ValueError, match="prompt_limits_tokens must be >= 0 and finite, got nan"):
        make_policy("mlfq", prompt_limits_tokens=[16, math.nan])


@pytest.mark.parametrize("params", [{"weights": {"bias": math.nan}},
                                    {"tenant_bias": {"a": math.inf}}])
def test_learned_predictor_refuses_nan_and_infinite_weights(params):
    with pytest.raises(ValueError, match="must be finite"):
        make_predictor("learned", **params)


def test_good_values_still_build():
    assert make_policy("vtc", tenant_weights={"a": 2}, input_weight=1, output_weight=2.0)
    assert make_policy("mlfq", quantum_growth=1.5, promote_s=None, prompt_limits_tokens=[0, 8])
