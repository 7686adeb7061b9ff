"""LPM (SGLang's): the longest cached prefix first, among every tenant: DLPM without its bound."""

import itertools

import pytest
from tests.core.sched.policies.test_dlpm import run

from shunter.core.sched.registry import make_policy


def test_lpm_runs_the_hot_prefix_back_to_back_and_starves_the_other_tenant():
    order, records = run("lpm", num_each=10)
    streaks = [len(list(g)) for _, g in itertools.groupby(rid[0] for rid in order)]
    assert streaks == [10, 10]  # a's prompt stays hot: all of a, then all of b
    assert sum(r.num_cached_tokens for r in records.values()) == 18 * 16  # all but 2 first


def test_lpm_decides_as_dlpm_does_when_the_quantum_never_runs_out():
    lpm_order, lpm = run("lpm", num_each=8)
    dlpm_order, dlpm = run("dlpm", quantum=1e9, num_each=8)
    assert lpm_order == dlpm_order
    assert lpm == dlpm


def test_lpm_charges_nothing_and_refuses_dlpms_fairness_parameters():
    policy = make_policy("lpm")
    assert policy.deficit("a") == float("inf")
    for name in ("quantum", "tenant_weights", "input_weight", "output_weight"):
        with pytest.raises(ValueError, match=f"bad parameters for scheduling policy 'lpm'.*{name}"):
            make_policy("lpm", **{name: 1.0})
    with pytest.raises(ValueError, match="max_candidates"):
        make_policy("lpm", max_candidates=0)
