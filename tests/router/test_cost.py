"""The cost router: expected latency in seconds per replica, cache hits and load in one unit."""

import pytest
from tests.factories import make_spec

from shunter.router.interface import ReplicaView
from shunter.router.policies.cost import CostParams, CostRouter, replica_cost
from shunter.router.registry import make_router

PARAMS = CostParams(expected_output_tokens=100, kv_knee=0.8, kv_penalty_s=0.1)


def view(replica_id=0, **kw) -> ReplicaView:
    base = dict(num_free_blocks=1000, num_total_blocks=1000, block_size=16,
                prefill_tokens_per_s=1000.0, decode_step_s=0.01)
    return ReplicaView(replica_id=replica_id, **{**base, **kw})


def req(request_id="r", hash_ids=(1, 2, 3, 4), **kw):
    return make_spec(request_id, num_prompt_tokens=16 * len(hash_ids), hash_ids=hash_ids, **kw)


def test_terms_by_hand():
    v = view(num_waiting=2, num_waiting_tokens=500, num_running=3)
    cost = replica_cost(req(), v, num_cached_tokens=16, params=PARAMS)
    assert cost.prefill_s == pytest.approx(48 / 1000)  # 64 prompt tokens, 16 cached
    assert cost.queue_s == pytest.approx(0.5)  # 500 waiting tokens at 1000 tok/s
    assert cost.decode_s == pytest.approx(100 * 0.01)  # L = 100 outputs, one step each
    assert cost.interference_s == pytest.approx(0.048 * 5)  # delays the 5 requests there
    assert cost.slot_s == 0.0 and cost.kv_penalty_s == 0.0
    assert cost.total_s == pytest.approx(0.048 + 0.5 + 1.0 + 0.24)


def test_max_output_tokens_caps_the_expected_output():
    cost = replica_cost(req(max_output_tokens=10), view(), 0, PARAMS)
    assert cost.decode_s == pytest.approx(10 * 0.01)


def test_missing_speeds_fall_back_to_the_router_defaults():
    bare = ReplicaView(replica_id=0, num_running=4, num_free_blocks=1000, num_total_blocks=1000)
    p = CostParams(prefill_tokens_per_s=2000.0, decode_step_base_s=0.02, decode_step_per_seq_s=0.001,
                   expected_output_tokens=10)
    cost = replica_cost(req(), bare, 0, p)
    assert cost.prefill_s == pytest.approx(64 / 2000)
    assert cost.decode_s == pytest.approx(10 * (0.02 + 0.001 * 5))  # 4 running + this one


def test_a_full_batch_waits_for_slots_to_free():
    v = view(num_running=8, num_waiting=1, max_num_seqs=8)
    cost = replica_cost(req(), v, 0, PARAMS)
    # 2 requests beyond the 8 slots; slots free at 8 per (100 outputs * 0.01 s)
    assert cost.slot_s == pytest.approx(2 * 100 * 0.01 / 8)
    assert replica_cost(req(), view(num_running=6, max_num_seqs=8), 0, PARAMS).slot_s == 0.0


def test_kv_penalty_is_zero_below_the_knee_and_convex_above():
    def penalty(num_free_blocks: int) -> float:
        return replica_cost(req(hash_ids=(1,), max_output_tokens=16),
                            view(num_free_blocks=num_free_blocks), 0, PARAMS).kv_penalty_s
    # this request needs 2 blocks (16 prompt + 16 output tokens)
    assert penalty(300) == 0.0  # usage 0.702
    steps = [penalty(free) for free in (152, 102, 52, 12)]  # usage 0.85, 0.90, 0.95, 0.99
    assert steps == sorted(steps) and steps[0] > 0
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert gaps == sorted(gaps)  # each step toward full costs more than the last
    assert steps[1] == pytest.approx(0.1 * (0.9 - 0.8) / 0.2 / 0.1)
    assert penalty(0) > penalty(1) > steps[-1]  # past full it still grows, finitely


def test_a_cache_hit_beats_a_short_queue_but_not_a_long_one():
    router = CostRouter(expected_output_tokens=1, randomize_ties=False)
    prefix = tuple(range(100))  # 1600 tokens: 1.6 s to prefill at 1000 tok/s
    assert router.route(req("a", prefix + (900,)), [view(0), view(1)]).replica_id == 0
    short_queue = [view(0, num_waiting=1, num_waiting_tokens=1000), view(1)]  # 1.0 s ahead
    assert router.route(req("b", prefix + (901,)), short_queue).replica_id == 0
    long_queue = [view(0, num_waiting=2, num_waiting_tokens=2000), view(1)]  # 2.0 s > 1.6 s
    assert router.route(req("c", prefix + (902,)), long_queue).replica_id == 1


def test_decode_pressure_sends_long_outputs_to_the_lighter_batch():
    router = CostRouter(expected_output_tokens=500, randomize_ties=False)
    vs = [view(0, num_running=40, decode_step_s=0.03), view(1, num_running=2, decode_step_s=0.012)]
    assert router.route(req(), vs).replica_id == 1


def test_heterogeneous_speed_is_priced():
    router = CostRouter(decode_weight=0.0, randomize_ties=False)
    vs = [view(0, prefill_tokens_per_s=1000.0), view(1, prefill_tokens_per_s=4000.0)]
    assert router.route(req(), vs).replica_id == 1


def test_ties_break_at_random_from_the_seed_or_by_lowest_id():
    vs = [view(i) for i in range(4)]

    def picks(**kw):
        router = make_router("cost", **kw)
        return [router.route(make_spec(f"r{i}"), vs).replica_id for i in range(40)]

    assert picks(seed=3) == picks(seed=3)
    assert set(picks(seed=3)) == {0, 1, 2, 3}
    assert set(picks(randomize_ties=False)) == {0}


def test_softmin_prefers_cheaper_replicas_and_is_seeded():
    vs = [view(0), view(1, num_waiting=1, num_waiting_tokens=500)]  # 0.5 s more on replica 1

    def picks(seed):
        router = CostRouter(seed=seed, temperature_s=0.5)
        return [router.route(make_spec(f"r{i}"), vs).replica_id for i in range(400)]

    first = picks(1)
    assert first == picks(1)
    share_1 = first.count(1) / len(first)  # expected e^-1 / (1 + e^-1) = 0.27
    assert 0.2 < share_1 < 0.34


def test_costs_do_not_change_the_index():
    router = CostRouter()
    router.costs(req(), [view(0)])
    assert router.index.num_tokens(0) == 0
    router.route(req(), [view(0)])
    assert router.index.num_tokens(0) == 64


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="kv_knee"):
        make_router("cost", kv_knee=1.0)
    with pytest.raises(ValueError, match="prefill_tokens_per_s"):
        make_router("cost", prefill_tokens_per_s=0)
    with pytest.raises(ValueError, match="temperature_s"):
        make_router("cost", temperature_s=-1)


def test_interference_keeps_a_cache_hit_on_a_busy_replica_that_myopia_would_leave():
    prefix = tuple(range(100))  # 1.6 s of prefill at 1000 tok/s

    def second_pick(interference_weight):
        router = CostRouter(expected_output_tokens=1, randomize_ties=False,
                            interference_weight=interference_weight)
        router.route(req("a", prefix + (900,)), [view(0), view(1)])  # replica 0 holds the prefix
        busy = [view(0, num_running=50, num_waiting=5, num_waiting_tokens=2000),  # 2 s queued
                view(1, num_running=50, num_waiting=5, num_waiting_tokens=0)]
        return router.route(req("b", prefix + (901,)), busy).replica_id

    # Myopic: 2 s of queue > 1.6 s of prefill saved, so recompute the prefix on replica 1.
    assert second_pick(0.0) == 1
    # Recomputing it there would also delay the 55 requests on replica 1 by 1.6 s each.
    assert second_pick(1.0) == 0


def test_queued_tokens_are_discounted_by_what_was_cached_when_sent():
    router = CostRouter(expected_output_tokens=1, queue_window_tokens=1)  # f follows the last
    prefix = tuple(range(99))
    router.route(req("a", prefix + (1,)), [view(0)])  # a miss: f = 1
    assert router.uncached_fraction[0] == pytest.approx(1.0, abs=1e-3)
    router.route(req("b", prefix + (2,)), [view(0)])  # 99 of 100 blocks cached
    assert router.uncached_fraction[0] == pytest.approx(0.01, abs=1e-3)
    queued = view(0, num_waiting=1, num_waiting_tokens=1600)  # 1.6 s if none of it were cached
    f = router.uncached_fraction[0]
    assert router.costs(req("c", prefix + (3,)), [queued])[0].queue_s == pytest.approx(f * 1.6)
