"""Learning to rank, re-ranked every step (the paper's scheduler, `preemptive=True`) against
ranked at admission only (the default): which requests hold the batch slots, step by step."""

from tests.factories import FakeExecutor, make_request, make_scheduler

from shunter.core.clock import ManualClock
from shunter.core.types import RequestStatus

PER_STEP = {"aging_s": None, "preemptive": True}
# arrival step -> (request id, score): better-ranked (lower score) requests keep arriving
ARRIVALS = {0: [("a", 50.0), ("b", 40.0)], 2: [("c", 10.0)], 3: [("d", 5.0)], 5: [("e", 30.0)]}
LENGTHS = {"a": 40, "b": 40, "c": 6, "d": 6, "e": 6}


def scored(rid: str, score: float, arrival_s: float):
    r = make_request(rid, num_prompt_tokens=4, num_output_tokens=LENGTHS[rid], arrival_s=arrival_s)
    r.predicted_output_tokens = score
    return r


def running_per_step(params: dict, num_steps: int = 12, **config) -> list[set[str]]:
    """The requests holding a batch slot after each step's decisions (two slots)."""
    clock = ManualClock()
    s = make_scheduler(clock=clock, policy="ltr", policy_params=params, max_num_seqs=2,
                       num_blocks=256, **config)
    ex = FakeExecutor(LENGTHS)
    seen: list[set[str]] = []
    for step in range(num_steps):
        for rid, score in ARRIVALS.get(step, []):
            assert s.add_request(scored(rid, score, clock.now())) is None
        out = s.schedule()
        seen.append({r.request_id for r in s.running})
        clock.advance_to(clock.now() + 1.0)
        s.update(out, ex.execute(out))
    return seen


def test_admission_only_keeps_worse_ranked_requests_in_their_slots():
    seen = running_per_step({"aging_s": None})
    assert seen[2] == seen[3] == {"a", "b"}  # c and d (better ranked) wait for a slot


def test_per_step_rerank_gives_the_slots_to_the_best_ranked_requests():
    seen = running_per_step(PER_STEP)
    assert seen[1] == {"a", "b"}
    assert seen[2] == {"b", "c"}  # c outranks a: a is preempted, c takes its slot
    assert seen[3] == {"c", "d"}  # d outranks b
    assert seen[5] == {"c", "d"}  # e (30) arrives behind both
    assert seen[8] == {"d", "e"}  # c finished: e takes the slot before the preempted b and a


def test_per_step_rerank_brings_swapped_requests_back_in_rank_order():
    clock = ManualClock()
    s = make_scheduler(clock=clock, policy="ltr", policy_params=PER_STEP, max_num_seqs=2,
                       num_blocks=256, preemption_mode="swap", num_host_blocks=64)
    ex = FakeExecutor(LENGTHS)
    order: list[str] = []
    swapped_seen = set()
    for step in range(80):
        for rid, score in ARRIVALS.get(step, []):
            assert s.add_request(scored(rid, score, clock.now())) is None
        out = s.schedule()
        swapped_seen |= {r.request_id for r in s.waiting if r.status == RequestStatus.SWAPPED}
        clock.advance_to(clock.now() + 1.0)
        order += [o.request_id for o in s.update(out, ex.execute(out)) if o.is_finished]
        if not s.has_work:
            break
    assert {"a", "b"} <= swapped_seen  # displaced by rank, kept on the host, not recomputed
    assert order.index("d") < order.index("b") and order.index("c") < order.index("a")
    assert order[-2:] == ["b", "a"]  # the swapped requests resume by rank (b: 40, a: 50)
