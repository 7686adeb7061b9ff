"""SGLang's cache-aware rule: longest match wins until load is imbalanced beyond both thresholds."""

import pytest
from tests.factories import make_spec

from shunter.router.interface import ReplicaView
from shunter.router.policies.prefix_affinity import PrefixAffinityRouter, is_imbalanced
from shunter.router.registry import make_router


def views(*num_running: int) -> list[ReplicaView]:
    return [ReplicaView(replica_id=i, num_running=n, num_running_tokens=100 * n,
                        num_free_blocks=1000, num_total_blocks=1000)
            for i, n in enumerate(num_running)]


def req(request_id: str, hash_ids: tuple[int, ...]):
    return make_spec(request_id, num_prompt_tokens=16 * len(hash_ids), hash_ids=hash_ids)


def test_imbalance_needs_both_the_absolute_and_the_relative_gap():
    assert not is_imbalanced([10, 80], abs_threshold=100, rel_threshold=1.5)  # gap 70 <= 100
    assert not is_imbalanced([100, 140], abs_threshold=32, rel_threshold=1.5)  # 140 <= 150
    assert is_imbalanced([100, 160], abs_threshold=32, rel_threshold=1.5)
    assert is_imbalanced([0, 33], abs_threshold=32, rel_threshold=1.5)


def test_longest_match_wins_until_imbalance_exceeds_the_thresholds():
    router = make_router("prefix_affinity", balance_abs_threshold=4, balance_rel_threshold=1.5)
    prefix = (1, 2, 3, 4)
    first = router.route(req("a", prefix + (10,)), views(0, 0, 0)).replica_id
    # balanced (gap 4, not > 4): the replica holding the prefix wins although it is the busiest
    assert router.route(req("b", prefix + (11,)), views(*[4 if i == first else 0
                                                          for i in range(3)])).replica_id == first
    # imbalanced (gap 5 > 4 and 5 > 1.5 * 0): shortest queue instead
    loads = [5 if i == first else 1 for i in range(3)]
    loads[(first + 1) % 3] = 0
    assert router.route(req("c", prefix + (12,)), views(*loads)).replica_id == (first + 1) % 3


def test_a_low_match_rate_goes_to_the_replica_with_the_smallest_index():
    router = PrefixAffinityRouter(cache_threshold=0.5)
    vs = views(0, 0, 0)
    assert router.route(req("a", (1, 2, 3, 4)), vs).replica_id == 0  # all empty: lowest id
    assert router.route(req("b", (5, 6)), vs).replica_id == 1  # replica 0 now holds 64 tokens
    # shares 1 of 4 blocks with replica 0 (25% <= 50%): not worth following; 2 is emptiest
    assert router.route(req("c", (1, 7, 8, 9)), vs).replica_id == 2
    # shares 3 of 4 (75% > 50%): follow the cache
    assert router.route(req("d", (1, 2, 3, 9)), vs).replica_id == 0


def test_imbalanced_routes_are_indexed_too():
    router = PrefixAffinityRouter(balance_abs_threshold=0, balance_rel_threshold=1.0)
    assert router.route(req("a", (1, 2)), views(3, 0)).replica_id == 1  # imbalanced: shortest queue
    assert router.route(req("b", (1, 2)), views(0, 0)).replica_id == 1  # balanced: follows the cache


def test_bad_thresholds_are_rejected():
    with pytest.raises(ValueError, match="cache_threshold"):
        make_router("prefix_affinity", cache_threshold=1.5)
    with pytest.raises(ValueError, match="balance_rel_threshold"):
        make_router("prefix_affinity", balance_rel_threshold=0.5)
