"""Skip-join MLFQ: join level from the prompt, demotion by quantum, token-granularity
preemption of a demoted job, starvation promotion."""

import pytest
from tests.factories import FakeExecutor, add_all, make_request, make_scheduler

from shunter.core.clock import ManualClock
from shunter.core.sched.policies.mlfq import MlfqPolicy


def test_skip_join_picks_the_first_level_whose_allowance_holds_the_prompt():
    p = MlfqPolicy(num_levels=4, prompt_quantum_tokens=100, quantum_growth=2.0)
    levels = {n: p.join_level(make_request(num_prompt_tokens=n)) for n in (1, 100, 101, 400, 401, 5000)}
    assert levels == {1: 0, 100: 0, 101: 1, 400: 2, 401: 3, 5000: 3}


def test_skip_join_from_a_profiled_table_of_prompt_limits():
    # level 0 holds no prompt (even one token's prefill outlasts its quantum); past the table's
    # last limit a prompt joins the level after it
    p = MlfqPolicy(num_levels=4, prompt_limits_tokens=(0, 100, 150))
    levels = {n: p.join_level(make_request(num_prompt_tokens=n)) for n in (1, 100, 101, 150, 151, 10000)}
    assert levels == {1: 1, 100: 1, 101: 2, 150: 2, 151: 3, 10000: 3}
    r = make_request(num_prompt_tokens=120)
    for _ in range(4):  # joined at level 2, whose quantum is 64 output tokens
        r.append_output(7)
    assert p.level(r) == 2
    for bad in ((5, 3), (1, 2, 3, 4, 5), ()):
        with pytest.raises(ValueError, match="prompt_limits_tokens"):
            MlfqPolicy(num_levels=4, prompt_limits_tokens=bad)


def test_demotion_after_each_quantum_of_output_tokens():
    p = MlfqPolicy(num_levels=4, base_quantum_tokens=4, quantum_growth=2.0)
    r = make_request(num_prompt_tokens=8)
    seen = []
    for _ in range(40):
        seen.append(p.level(r))
        r.append_output(7)
    # quanta 4, 8, 16 at levels 0, 1, 2; level 3 is the last
    assert seen[:4] == [0] * 4 and seen[4:12] == [1] * 8 and seen[12:28] == [2] * 16
    assert set(seen[28:]) == {3}


def run(policy: str, params=None, arrivals=(), lengths=None, max_steps=500, **config):
    """Step with 1 s steps; `arrivals` are (time, request) pairs added when their time comes."""
    clock = ManualClock()
    s = make_scheduler(clock=clock, policy=policy, policy_params=params, **config)
    ex = FakeExecutor(lengths)
    pending = sorted(arrivals, key=lambda a: a[0])
    finish = {}
    for _ in range(max_steps):
        while pending and pending[0][0] <= clock.now():
            add_all(s, [pending.pop(0)[1]])
        if not s.has_work:
            if not pending:
                break
            clock.advance_to(pending[0][0])
            continue
        out = s.schedule()
        res = ex.execute(out)
        clock.advance_to(clock.now() + 1)
        finish.update({o.request_id: clock.now() for o in s.update(out, res) if o.is_finished})
    return finish, ex


def test_a_new_short_job_preempts_a_demoted_long_one_at_token_granularity():
    lengths = {"long": 60, "short": 3}
    arrivals = [(0.0, make_request("long", num_prompt_tokens=8, arrival_s=0.0)),
                (10.0, make_request("short", num_prompt_tokens=8, arrival_s=10.0))]
    params = {"base_quantum_tokens": 4, "promote_s": None}
    mlfq, ex = run("mlfq", params, arrivals, lengths, max_num_seqs=1)
    preempting = [o for o in ex.outputs if o.preempted_ids]
    assert preempting and preempting[0].preempted_ids == ("long",)
    assert mlfq["short"] == 13.0  # admitted at once at t=10: three 1 s steps, three tokens
    fcfs, _ = run("fcfs", None, [(t, make_request(r.request_id, num_prompt_tokens=8, arrival_s=t))
                                 for t, r in arrivals], lengths, max_num_seqs=1)
    assert fcfs["short"] > 60 > mlfq["short"]  # FCFS: the short job waits for the long one


def test_jobs_in_the_same_level_do_not_preempt_each_other():
    arrivals = [(0.0, make_request("a", num_prompt_tokens=8, arrival_s=0.0)),
                (1.0, make_request("b", num_prompt_tokens=8, arrival_s=1.0))]
    _, ex = run("mlfq", {"base_quantum_tokens": 100, "promote_s": None}, arrivals,
                {"a": 20, "b": 5}, max_num_seqs=1)
    assert not any(o.preempted_ids for o in ex.outputs)


def test_starvation_promotion_lets_an_old_demoted_job_back_in():
    # a long job demoted to the last level; a stream of new short jobs keeps level 0 busy
    arrivals = [(0.0, make_request("long", num_prompt_tokens=8, arrival_s=0.0))]
    arrivals += [(5.0 + 2 * i, make_request(f"s{i}", num_prompt_tokens=8, arrival_s=5.0 + 2 * i))
                 for i in range(100)]
    lengths = {"long": 80, **{f"s{i}": 3 for i in range(100)}}
    base = {"base_quantum_tokens": 2, "num_levels": 4}
    starved, _ = run("mlfq", {**base, "promote_s": None}, arrivals, lengths, max_steps=2000,
                     max_num_seqs=1)
    arrivals = [(t, make_request(r.request_id, num_prompt_tokens=8, arrival_s=t)) for t, r in arrivals]
    promoted, _ = run("mlfq", {**base, "promote_s": 2.0}, arrivals, lengths, max_steps=2000,
                      max_num_seqs=1)
    assert starved["long"] > max(v for k, v in starved.items() if k != "long")  # last of all
    assert promoted["long"] < starved["long"] - 50


def test_mlfq_is_marked_dynamic_so_decode_runs_stop_while_anything_waits():
    assert MlfqPolicy().has_static_order is False
    with pytest.raises(ValueError, match="quantum_growth"):
        MlfqPolicy(quantum_growth=0.5)


def test_steps_until_reorder_is_the_least_quantum_left():
    policy = MlfqPolicy(base_quantum_tokens=16, quantum_growth=2.0, num_levels=3,
                        prompt_quantum_tokens=512)
    a = make_request("a", num_prompt_tokens=10)
    b = make_request("b", num_prompt_tokens=10)
    a.num_output_tokens, b.num_output_tokens = 10, 20  # a: 6 left at level 0; b: 28 at level 1
    assert policy.steps_until_reorder([a, b]) == 6
    b.num_output_tokens = 48  # level 2, the last: it never moves again
    assert policy.steps_until_reorder([b]) > 10**9
