import pytest

from shunter.router.interface import ReplicaView
from shunter.router.registry import make_router
from tests.factories import make_spec


def views(*loads: tuple[int, int]) -> list[ReplicaView]:
    return [ReplicaView(replica_id=i, num_waiting_tokens=w, num_running_tokens=r, num_running=1)
            for i, (w, r) in enumerate(loads)]


def test_round_robin_cycles():
    router = make_router("round_robin")
    vs = views((0, 0), (0, 0), (0, 0))
    assert [router.route(make_spec(), vs).replica_id for _ in range(5)] == [0, 1, 2, 0, 1]


def test_least_load_picks_fewest_tokens_then_lowest_id():
    router = make_router("least_load")
    assert router.route(make_spec(), views((100, 50), (10, 20), (0, 40))).replica_id == 1
    assert router.route(make_spec(), views((5, 5), (0, 10))).replica_id == 0


def test_unknown_router_lists_valid_names():
    with pytest.raises(ValueError, match="least_load.*round_robin"):
        make_router("nope")
