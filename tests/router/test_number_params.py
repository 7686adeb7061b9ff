"""Every number a router takes from router_params refuses NaN and infinities, naming it."""

from __future__ import annotations

import math

import pytest

from shunter.router.registry import make_router

PARAMS = [
    ("cost", "temperature_s"), ("cost", "queue_window_tokens"), ("cost", "prefill_tokens_per_s"),
    ("cost", "decode_step_base_s"), ("cost", "decode_step_per_seq_s"),
    ("cost", "expected_output_tokens"), ("cost", "decode_weight"),
    ("cost", "interference_weight"), ("cost", "kv_knee"), ("cost", "kv_penalty_s"),
    ("d2lpm", "quantum_tokens"), ("d2lpm", "max_kv_usage"), ("d2lpm", "output_weight"),
    ("d2lpm", "expected_output_tokens"),
    ("prefix_affinity", "cache_threshold"), ("prefix_affinity", "balance_abs_threshold"),
    ("prefix_affinity", "balance_rel_threshold"),
    ("session", "max_load_gap"), ("session", "max_load_ratio"), ("session", "max_kv_usage"),
    ("session", "max_sessions"),
]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("router, param", PARAMS)
def test_router_parameters_refuse_nan_and_infinities(router, param, value):
    with pytest.raises(ValueError, match=rf"{param} must be .*got {value}"):
        make_router(router, **{param: value})


def test_good_values_still_build():
    assert make_router("cost", temperature_s=0.5, kv_knee=0.0)
    assert make_router("session", max_load_ratio=1, max_kv_usage=1.0)
