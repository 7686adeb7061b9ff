"""D2LPM dispatch: longest prefix match among replicas where the client has deficit left."""

import pytest
from tests.factories import make_spec

from shunter.router.interface import ReplicaView
from shunter.router.policies.d2lpm import D2lpmRouter
from shunter.router.registry import make_router

PREFIX = tuple(range(10))  # 160 shared tokens


def views(n=3, free=None) -> list[ReplicaView]:
    free = free or (1000,) * n
    return [ReplicaView(replica_id=i, num_free_blocks=f, num_total_blocks=1000)
            for i, f in enumerate(free)]


def req(request_id, tenant="a", suffix=0):
    return make_spec(request_id, num_prompt_tokens=176, hash_ids=PREFIX + (1000 + suffix,),
                     tenant=tenant, max_output_tokens=8)


def test_the_charge_is_uncached_prompt_plus_weighted_expected_output():
    router = D2lpmRouter(quantum_tokens=1000, output_weight=2.0)
    vs = views()
    assert router.route(req("r0"), vs).replica_id == 0  # new round: every deficit = 1000
    assert router.deficit("a", 0) == pytest.approx(1000 - 176 - 2 * 8)
    assert router.route(req("r1", suffix=1), vs).replica_id == 0  # 160 of 176 cached
    assert router.deficit("a", 0) == pytest.approx(808 - 16 - 16)
    assert router.deficit("a", 1) == router.deficit("a", 2) == 1000


def test_longest_match_beats_load_while_the_deficit_lasts():
    router = D2lpmRouter(quantum_tokens=10_000, output_weight=0.0)
    assert router.route(req("r0"), views()).replica_id == 0
    busy_0 = [ReplicaView(replica_id=0, num_running=5, num_running_tokens=5000,
                          num_free_blocks=700, num_total_blocks=1000), *views()[1:]]
    assert [router.route(req(f"r{i}", suffix=i), busy_0).replica_id for i in range(1, 6)] == [0] * 5


def test_a_client_spills_once_its_share_on_a_replica_is_spent_and_returns_next_round():
    router = D2lpmRouter(quantum_tokens=200, output_weight=0.0)
    vs = views()
    picks = [router.route(req(f"r{i}", suffix=i), vs).replica_id for i in range(10)]
    # On each replica: a 176-token miss, then 16-token hits, until 200 tokens are spent; the
    # spill goes to the replica with deficit left. Once all are spent a new round starts and
    # every replica holds the prefix: the tie breaks by load, then lowest id.
    assert picks == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
    assert router.deficit("a", 0) == pytest.approx(-8 + 200 - 16)
    assert router.deficit("a", 1) == router.deficit("a", 2) == pytest.approx(-8 + 200)


def test_clients_have_separate_deficits():
    router = D2lpmRouter(quantum_tokens=200, output_weight=0.0)
    vs = views()
    for i in range(3):
        router.route(req(f"a{i}", suffix=i), vs)  # client a spends its share on replica 0
    assert router.route(req("a3", suffix=3), vs).replica_id == 1
    assert router.route(req("b0", tenant="b", suffix=4), vs).replica_id == 0  # b still may


def test_memory_guard_skips_a_nearly_full_replica_unless_all_are():
    router = D2lpmRouter(quantum_tokens=10_000, max_kv_usage=0.9)
    assert router.route(req("r0"), views()).replica_id == 0
    assert router.route(req("r1", suffix=1), views(free=(100, 1000, 1000))).replica_id == 1
    assert router.route(req("r2", suffix=2), views(free=(50, 80, 90))).replica_id == 0


def test_same_requests_same_decisions():
    def run():
        router = make_router("d2lpm", quantum_tokens=300)
        return [router.route(req(f"r{i}", tenant="ab"[i % 2], suffix=i % 4), views()).replica_id
                for i in range(30)]
    assert run() == run()


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="quantum_tokens"):
        make_router("d2lpm", quantum_tokens=0)
    with pytest.raises(ValueError, match="max_kv_usage"):
        make_router("d2lpm", max_kv_usage=1.5)
