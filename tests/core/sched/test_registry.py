"""One table of policy parameters split between the policies that run (issue 17): each gets
the keys it takes, a table nested under its name is its own, and a key no policy run takes
is an error naming it."""

import pytest

from shunter.core.sched.registry import make_policy, policy_param_names, scope_policy_params


def test_a_bare_key_goes_only_to_the_policies_that_take_it():
    scoped = scope_policy_params(["priority", "fcfs", "ltr"], {"aging_s": 30.0})
    assert scoped == {"priority": {"aging_s": 30.0}, "fcfs": {}, "ltr": {"aging_s": 30.0}}
    assert make_policy("priority", **scoped["priority"]).aging_s == 30.0
    make_policy("fcfs", **scoped["fcfs"])


def test_a_nested_table_is_its_policys_own_and_wins_over_a_bare_key():
    params = {"aging_s": 5.0, "priority": {"aging_s": 30.0}, "sarathi": {"tbt_slo_s": 0.2}}
    scoped = scope_policy_params(["priority", "ltr", "fcfs"], params)
    assert scoped == {"priority": {"aging_s": 30.0}, "ltr": {"aging_s": 5.0}, "fcfs": {}}


def test_a_table_for_a_policy_not_run_is_checked_but_not_used():
    assert scope_policy_params(["fcfs"], {"priority": {"aging_s": 1.0}}) == {"fcfs": {}}
    with pytest.raises(ValueError, match="priority takes no 'agin_s'; valid: aging_s"):
        scope_policy_params(["fcfs"], {"priority": {"agin_s": 1.0}})
    with pytest.raises(ValueError, match="'priority' names a policy, so its value must be a table"):
        scope_policy_params(["fcfs"], {"priority": 1.0})


def test_a_key_no_policy_run_takes_is_an_error_naming_it_and_its_takers():
    with pytest.raises(ValueError, match=r"'aging_s' is taken by none of the policies run "
                                         r"\(fcfs, sarathi\): only ltr, plas, priority take it"):
        scope_policy_params(["fcfs", "sarathi"], {"aging_s": 30.0})
    with pytest.raises(ValueError, match=r"'agin_s' .* no policy takes it; valid: fcfs: "):
        scope_policy_params(["fcfs"], {"agin_s": 30.0})


def test_unknown_policy_names_fail_first():
    with pytest.raises(ValueError, match="unknown scheduling policy 'fifo'; valid: aios_rr, dlpm"):
        scope_policy_params(["fifo"], {})
    assert "tbt_slo_s" in policy_param_names("sarathi")
