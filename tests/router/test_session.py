"""Session affinity: a session sticks to its replica until that replica is overloaded."""

import pytest
from tests.factories import make_spec

from shunter.router.interface import ReplicaView
from shunter.router.policies.session import SessionRouter
from shunter.router.registry import make_router


def views(*num_running: int, free: tuple[int, ...] | None = None) -> list[ReplicaView]:
    free = free or (1000,) * len(num_running)
    return [ReplicaView(replica_id=i, num_running=n, num_running_tokens=100 * n,
                        num_free_blocks=f, num_total_blocks=1000)
            for i, (n, f) in enumerate(zip(num_running, free, strict=True))]


def turn(session: str, k: int):
    return make_spec(f"{session}-{k}", session_id=session)


def test_a_session_stays_on_its_replica_while_it_is_not_overloaded():
    router = SessionRouter(fallback="least_load", max_load_gap=4, max_load_ratio=1.5)
    assert router.route(turn("s", 0), views(0, 0, 0)).replica_id == 0
    # replica 0 is now the busiest, but within the gap (4 - 0 = 4, not > 4): stay
    assert router.route(turn("s", 1), views(4, 0, 0)).replica_id == 0
    # beyond the gap and the ratio: fall back to least load and re-pin there
    assert router.route(turn("s", 2), views(5, 3, 0)).replica_id == 2
    assert router.route(turn("s", 3), views(5, 3, 2)).replica_id == 2


def test_a_nearly_full_kv_cache_also_counts_as_overloaded():
    router = SessionRouter(fallback="least_load", max_kv_usage=0.9)
    assert router.route(turn("s", 0), views(0, 0)).replica_id == 0
    assert router.route(turn("s", 1), views(1, 1, free=(101, 1000))).replica_id == 0  # 89.9% used
    assert router.route(turn("s", 2), views(1, 1, free=(100, 1000))).replica_id == 1  # 90% used


def test_sessions_are_independent_and_requests_without_one_use_the_fallback():
    router = SessionRouter(fallback="least_load")
    assert router.route(turn("a", 0), views(0, 0)).replica_id == 0
    assert router.route(turn("b", 0), views(1, 0)).replica_id == 1
    assert router.route(turn("a", 1), views(1, 1)).replica_id == 0
    assert router.route(turn("b", 1), views(1, 1)).replica_id == 1
    assert router.route(make_spec("loose"), views(3, 2)).replica_id == 1


def test_a_pinned_replica_that_left_the_cluster_is_replaced():
    router = SessionRouter(fallback="least_load")
    router.route(turn("s", 0), views(0, 5))
    survivors = [ReplicaView(replica_id=1, num_free_blocks=10, num_total_blocks=10)]
    assert router.route(turn("s", 1), survivors).replica_id == 1


def test_pins_are_bounded_least_recently_seen_first():
    router = SessionRouter(fallback="least_load", max_sessions=2)
    router.route(turn("a", 0), views(0, 1))  # a -> 0
    router.route(turn("b", 0), views(1, 0))  # b -> 1
    router.route(turn("a", 1), views(1, 1))  # a seen again
    router.route(turn("c", 0), views(1, 1))  # forgets b
    assert router.route(turn("b", 1), views(1, 0)).replica_id == 1  # least load, not the old pin
    # a (pinned to 0, not overloaded there) was forgotten when b came back: least load decides
    assert router.route(turn("a", 2), views(3, 2)).replica_id == 1


def test_the_cost_fallback_learns_from_pinned_routes():
    router = make_router("session", fallback="cost", seed=0)
    prompt = dict(num_prompt_tokens=64, hash_ids=(1, 2, 3, 4))
    router.route(make_spec("s-0", session_id="s", **prompt), views(0, 0))
    pinned = router._pins["s"]
    router.route(make_spec("s-1", session_id="s", **prompt), views(0, 0))
    assert router.fallback.index.num_tokens(pinned) == 64


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="fallback"):
        make_router("session", fallback="nope")
    with pytest.raises(ValueError, match="max_sessions"):
        make_router("session", max_sessions=0)
