"""Length-grouped sequence scheduling: the paper's grouping (sort, bins, VBS, small tails),
static micro-batches, FCR as recall + recompute after the group, parameters, runtimes."""

from __future__ import annotations

import math

import pytest
from tests.factories import FakeExecutor, add_all, make_request, make_scheduler, run_steps

from shunter.core.clock import ManualClock
from shunter.core.request import Request
from shunter.core.sched.gateway_queue import GatewayQueue
from shunter.core.sched.policies.length_grouped import GroupQueue, LengthGroupedPolicy
from shunter.core.sched.policy import RecallingPolicy
from shunter.core.sched.registry import PREDICTIVE_POLICIES, make_policy
from shunter.core.types import RequestSpec, RequestStatus
from shunter.metrics import summarize
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate


def req(request_id: str, predicted: float | None, *, arrival_s: float = 0.0,
        max_output_tokens: int | None = None) -> Request:
    r = make_request(request_id, arrival_s=arrival_s, max_output_tokens=max_output_tokens)
    r.predicted_output_tokens = predicted
    return r


def ids(batches) -> list[tuple[list[str], int | None]]:
    return [([r.request_id for r in members], limit) for members, limit in batches]


def test_vbs_plan_sorts_bins_sizes_and_moves_a_small_last_batch_to_the_next_bin():
    policy = LengthGroupedPolicy(bin_tokens=50, vbs_batch_sizes=(4, 2), batch_size=2)
    preds = {"a": 10, "b": 60, "c": 20, "d": 30, "e": 40, "f": 45, "g": 120, "h": 55}
    plan = policy.plan([req(k, v) for k, v in preds.items()])
    # bin 50 holds a c d e f: a full batch of 4, then f alone (< 2) joins bin 100 (h b f), whose
    # last batch (f) joins bin 150; bins past the table take its last size (2); a batch runs
    # its members in predicted order
    assert ids(plan) == [(["a", "c", "d", "e"], 50), (["h", "b"], 100), (["f", "g"], 150)]


def test_without_vbs_batches_of_batch_size_run_to_their_largest_prediction():
    policy = LengthGroupedPolicy(vbs_batch_sizes=None, batch_size=2)
    plan = policy.plan([req("a", 70.2), req("b", 3), req("c", None, max_output_tokens=40),
                        req("d", 9)])
    assert ids(plan) == [(["b", "d"], 9), (["c", "a"], 71)]
    assert ids(LengthGroupedPolicy(vbs_batch_sizes=None, fcr=False).plan([req("a", 5)])) == [
        (["a"], None)]


def test_static_batches_run_one_micro_batch_at_a_time_and_fcr_recomputes_after_the_group():
    clock = ManualClock()
    s = make_scheduler(num_blocks=256, policy="length_grouped", clock=clock,
                       policy_params={"vbs_batch_sizes": None, "batch_size": 2})
    lengths = {"a": 3, "b": 20, "c": 2, "d": 9}
    add_all(s, [req(k, p, arrival_s=float(i))
                for i, (k, p) in enumerate({"a": 4, "b": 4, "c": 2, "d": 8}.items())])
    executor = FakeExecutor(lengths)
    outputs = run_steps(s, executor, clock)
    steps = [sorted(c.request_id for c in o.chunks) for o in executor.outputs]
    # batch (c, a): a runs alone after c ends, and (b, d) waits for it
    assert steps[:3] == [["a", "c"], ["a", "c"], ["a"]]
    assert steps[3] == ["b", "d"]
    # (b, d) may generate 8 tokens: both outrun it, are recalled together and recomputed as a
    # failure batch without a limit; d ends at 9 tokens, b at 20
    recalled = [o for o in executor.outputs if o.preempted_ids]
    assert len(recalled) == 1 and sorted(recalled[0].preempted_ids) == ["b", "d"]
    assert s.waiting.num_failures == 2 and s.waiting.num_groups == 1
    assert [o.request_id for o in outputs if o.finish_reason] == ["c", "a", "d", "b"]
    assert executor.generated == lengths  # outputs kept across the recall: none lost or repeated


def test_a_request_without_prediction_is_never_recalled():
    clock = ManualClock()
    s = make_scheduler(num_blocks=256, policy="length_grouped", clock=clock,
                       policy_params={"vbs_batch_sizes": None})
    add_all(s, [req("p", 2), req("u", None)])
    executor = FakeExecutor({"p": 2, "u": 30})
    run_steps(s, executor, clock)
    assert not any(o.preempted_ids for o in executor.outputs)
    assert executor.generated == {"p": 2, "u": 30}


def test_continuous_mode_admits_in_group_order_without_waiting_for_batches():
    clock = ManualClock()
    s = make_scheduler(num_blocks=256, policy="length_grouped", clock=clock, max_num_seqs=2,
                       policy_params={"static_batches": False, "vbs_batch_sizes": None,
                                      "batch_size": 2, "fcr": False})
    add_all(s, [req("long", 90), req("short", 1), req("mid", 20)])
    executor = FakeExecutor({"long": 90, "short": 1, "mid": 20})
    run_steps(s, executor, clock)
    first = [sorted(c.request_id for c in o.chunks) for o in executor.outputs[:2]]
    # short and mid go first; long takes short's seat at once (no batch to wait for)
    assert first == [["mid", "short"], ["long", "mid"]]


def test_arrivals_after_a_group_is_planned_wait_for_the_next_group():
    queue = LengthGroupedPolicy(vbs_batch_sizes=None, batch_size=1,
                                static_batches=False).make_queue()
    for r in (req("x", 300), req("y", 200)):
        queue.add(r)
    assert queue.pop().request_id == "y"  # the group (x, y) is planned at its first admission
    queue.add(req("z", 1))  # shorter, but in the next group
    assert [r.request_id for r in queue] == ["x", "z"]
    assert queue.peek().request_id == "x" and queue.num_groups == 1


def test_peek_previews_the_next_group_without_planning_it():
    queue = LengthGroupedPolicy().make_queue()
    queue.add(req("x", 300))
    assert queue.peek().request_id == "x" and queue.num_groups == 0
    queue.add(req("y", 10))  # arrives before the group starts: joins it, and sorts first
    assert queue.pop().request_id == "y" and queue.num_groups == 1


def test_a_memory_preempted_request_resumes_first_and_is_no_failure():
    policy = LengthGroupedPolicy(vbs_batch_sizes=None, batch_size=3)
    queue = policy.make_queue()
    a, b, c = req("a", 5), req("b", 6), req("c", 7)
    for r in (a, b, c):
        queue.add(r)
    assert queue.pop() is a and queue.pop() is b
    b.status = RequestStatus.PREEMPTED
    b.num_output_tokens = 3  # below its batch's 7
    queue.add(b)
    assert [r.request_id for r in queue] == ["b", "c"] and queue.num_failures == 0
    assert policy.steps_until_reorder([a]) == 7 and policy.recalls([a]) == []
    a.num_output_tokens = 7
    assert policy.recalls([a]) == [a] and policy.steps_until_reorder([a]) == 0


@pytest.mark.parametrize("params, name", [
    ({"bin_tokens": 0}, "bin_tokens"), ({"batch_size": 2.5}, "batch_size"),
    ({"group_size": math.nan}, "group_size"), ({"unknown_output_tokens": -1}, "unknown_output_tokens"),
    ({"vbs_batch_sizes": []}, "vbs_batch_sizes"), ({"vbs_batch_sizes": "16"}, "vbs_batch_sizes"),
    ({"vbs_batch_sizes": [8, 0]}, "vbs_batch_sizes"), ({"vbs_batch_sizes": [8, 1.5]}, "vbs_batch_sizes"),
    ({"fcr": "yes"}, "fcr"), ({"static_batches": 1}, "static_batches"),
])
def test_bad_parameters_are_value_errors_naming_the_parameter(params, name):
    with pytest.raises(ValueError, match=name):
        make_policy("length_grouped", **params)


def test_registered_as_predictive_and_recalling():
    policy = make_policy("length_grouped")
    assert "length_grouped" in PREDICTIVE_POLICIES and isinstance(policy, RecallingPolicy)
    assert make_policy("length_grouped", batch_size=16.0).batch_size == 16  # whole floats are ints


def test_gateway_refuses_static_batches_and_orders_by_group_without():
    with pytest.raises(ValueError, match="length_grouped.*static_batches"):
        GatewayQueue(make_policy("length_grouped"))
    queue = GatewayQueue(make_policy("length_grouped", static_batches=False))
    for i, p in enumerate((300, 10, 120)):
        queue.add(req(f"r{i}", p, arrival_s=float(i)))
    order = []
    while len(queue):
        r = queue.pop(0.0)
        order.append(r.request_id)
        queue.finish(r, None, 5, 1.0)
    assert order == ["r1", "r2", "r0"]


def offline_specs(n: int = 64) -> list[RequestSpec]:
    """Every request at t = 0; one long answer in every four (vanilla batches all hold one)."""
    return [RequestSpec(request_id=f"r{i}", arrival_s=0.0, num_prompt_tokens=64,
                        num_output_tokens=400 if i % 4 == 0 else 20 + i, max_output_tokens=512)
            for i in range(n)]


def test_simulator_grouping_by_true_length_beats_vanilla_batching():
    specs = offline_specs()

    def throughput(predictor: str | None, **params: object) -> float:
        run = simulate(SimConfig(policy="length_grouped", predictor=predictor,
                                 policy_params=params), specs)
        assert len(run.records) == len(specs) and all(r.finish_s for r in run.records)
        value = summarize(run.records).throughput_req_s
        assert value is not None
        return value

    vanilla = throughput(None, vbs_batch_sizes=None, fcr=False)
    assert throughput("oracle", vbs_batch_sizes=None) > 1.5 * vanilla
    assert throughput("oracle") > 1.5 * vanilla


def test_group_queue_len_iter_and_remove_agree():
    queue: GroupQueue = LengthGroupedPolicy(batch_size=1, vbs_batch_sizes=None,
                                            static_batches=False).make_queue()
    rs = [req(f"r{i}", 10 * (3 - i)) for i in range(3)]
    for r in rs:
        queue.add(r)
    queue.remove(rs[2])
    assert len(queue) == 2 and [r.request_id for r in queue] == ["r0", "r1"]
    assert queue.pop() is rs[1] and queue.pop() is rs[0] and queue.peek() is None
