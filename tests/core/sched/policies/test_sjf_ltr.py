"""SJF on predicted output length and learning-to-rank: order, priorities, unknown predictions,
aging that ends starvation, and optional preemption."""

import pytest
from tests.factories import FakeExecutor, add_all, make_request, make_scheduler

from shunter.core.clock import ManualClock
from shunter.core.sched.registry import make_policy


def finish_order(policy: str, requests, lengths, params=None, **config) -> list[str]:
    clock = ManualClock()
    s = make_scheduler(clock=clock, policy=policy, policy_params=params, max_num_seqs=1, **config)
    add_all(s, requests)
    ex = FakeExecutor(lengths)
    order = []
    while s.has_work:
        out = s.schedule()
        res = ex.execute(out)
        clock.advance_to(clock.now() + res.duration_s)
        order += [o.request_id for o in s.update(out, res) if o.is_finished]
    return order


def predicted(rid: str, tokens: float | None, **kw):
    r = make_request(rid, **kw)
    r.predicted_output_tokens = tokens
    return r


@pytest.mark.parametrize("policy", ["sjf", "ltr"])
def test_shortest_predicted_runs_first(policy):
    reqs = [predicted("long", 50), predicted("short", 5), predicted("mid", 20)]
    order = finish_order(policy, reqs, {"long": 50, "short": 5, "mid": 20},
                         {"aging_tokens_per_s": None} if policy == "sjf" else {"aging_s": None})
    assert order == ["short", "mid", "long"]


@pytest.mark.parametrize("policy", ["sjf", "ltr"])
def test_priority_comes_before_predicted_length(policy):
    reqs = [predicted("short_low", 2, priority=1), predicted("long_high", 40, priority=0)]
    assert finish_order(policy, reqs, {"short_low": 2, "long_high": 40}) == ["long_high", "short_low"]


@pytest.mark.parametrize("policy", ["sjf", "ltr"])
def test_unknown_predictions_fall_back_to_arrival_order(policy):
    reqs = [predicted(f"r{i}", None, arrival_s=float(i)) for i in range(4)]
    assert finish_order(policy, reqs, {f"r{i}": 10 - i for i in range(4)}) == ["r0", "r1", "r2", "r3"]


def test_sjf_aging_ends_starvation_of_a_long_job():
    # a 300-token job waits behind a stream of 5-token jobs arriving every second; one step = 1 s
    def workload():
        return [predicted("long", 300, arrival_s=0.0),
                *(predicted(f"s{i}", 5, arrival_s=float(i)) for i in range(60))]
    lengths = {**{f"s{i}": 5 for i in range(60)}, "long": 3}
    no_aging = finish_order("sjf", workload(), lengths, {"aging_tokens_per_s": None})
    assert no_aging[-1] == "long"  # starves until the stream is gone
    aged = finish_order("sjf", workload(), lengths, {"aging_tokens_per_s": 20.0})
    # 300 - 20 t beats a newcomer's 5 once it has waited (300 - 5) / 20 ~ 15 s
    assert aged.index("long") < 25


def test_ltr_aging_bounds_the_wait_in_score_units():
    stream = [predicted(f"s{i}", -1.0, arrival_s=float(i)) for i in range(40)]
    low = predicted("low", 3.0, arrival_s=0.0)  # scored 4 units worse than every newcomer
    lengths = {**{f"s{i}": 2 for i in range(40)}, "low": 2}
    order = finish_order("ltr", [low, *stream], lengths, {"aging_s": 2.0})
    assert 3 <= order.index("low") <= 8  # overtaken only by requests younger than 4 * 2 s


@pytest.mark.parametrize("policy", ["sjf", "ltr"])
def test_preemptive_mode_displaces_a_longer_running_job(policy):
    clock = ManualClock()
    s = make_scheduler(clock=clock, policy=policy, policy_params={"preemptive": True},
                       max_num_seqs=1)
    add_all(s, [predicted("long", 100)])
    ex = FakeExecutor({"long": 100, "short": 2})
    for _ in range(3):
        out = s.schedule()
        clock.advance_to(clock.now() + 1)
        s.update(out, ex.execute(out))
    add_all(s, [predicted("short", 2, arrival_s=clock.now())])
    out = s.schedule()
    assert out.preempted_ids == ("long",) and [c.request_id for c in out.chunks] == ["short"]


def test_bad_parameters_are_value_errors():
    with pytest.raises(ValueError, match="aging_tokens_per_s"):
        make_policy("sjf", aging_tokens_per_s=0)
    with pytest.raises(ValueError, match="aging_s"):
        make_policy("ltr", aging_s=-1)
    with pytest.raises(ValueError, match="bad parameters"):
        make_policy("sjf", bogus=1)
