"""Every registered router, on random snapshots: a valid replica, every time, reproducibly."""

import random
from dataclasses import replace

import pytest
from tests.factories import make_spec

from shunter.router.interface import ReplicaView, reads_speeds
from shunter.router.registry import ROUTERS, make_router


def random_views(rng: random.Random) -> list[ReplicaView]:
    ids = rng.sample(range(100), rng.randint(1, 8))  # not 0..n-1, not sorted
    views = []
    for replica_id in ids:
        total = rng.choice([1, 64, 4096])
        views.append(ReplicaView(
            replica_id=replica_id, num_waiting=rng.randint(0, 20), num_running=rng.randint(0, 300),
            num_waiting_tokens=rng.randint(0, 50_000), num_running_tokens=rng.randint(0, 200_000),
            num_free_blocks=rng.randint(0, total), num_total_blocks=total,
            block_size=rng.choice([1, 16, 32]),
            prefill_tokens_per_s=rng.choice([None, 500.0, 20_000.0]),
            decode_step_s=rng.choice([None, 0.005, 0.2]),
            max_num_seqs=rng.choice([None, 1, 256])))
    return views


def random_request(rng: random.Random, i: int):
    num_prompt_tokens = rng.randint(1, 3000)
    prompt: dict = {}
    kind = rng.randrange(3)
    if kind == 0:
        prompt["hash_ids"] = tuple(rng.randrange(5) for _ in range(-(-num_prompt_tokens // 512)))
        prompt["hash_block_size"] = 512
    elif kind == 1:
        prompt["prompt_token_ids"] = tuple(rng.randrange(3) for _ in range(num_prompt_tokens))
    return make_spec(f"r{i}", num_prompt_tokens=num_prompt_tokens, tenant=rng.choice("abc"),
                     session_id=rng.choice([None, "s1", "s2", "s3"]),
                     max_output_tokens=rng.choice([None, 1, 64]), **prompt)


def decisions(name: str, seed: int, *, speeds: bool = True) -> list[int]:
    rng = random.Random(seed)
    router = make_router(name)
    picks = []
    for i in range(150):
        views = random_views(rng)
        if not speeds:  # what the simulator hands a router that declares reads_speeds = False
            views = [replace(v, prefill_tokens_per_s=None, decode_step_s=None) for v in views]
        decision = router.route(random_request(rng, i), views)
        assert decision.replica_id in {v.replica_id for v in views}, (name, i, decision)
        picks.append(decision.replica_id)
    return picks


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_every_router_picks_a_replica_it_was_shown_and_repeats_itself(name):
    assert decisions(name, seed=11) == decisions(name, seed=11)


@pytest.mark.parametrize("name", sorted(n for n in ROUTERS if not reads_speeds(make_router(n))))
def test_a_router_declaring_it_reads_no_speeds_decides_the_same_without_them(name):
    assert decisions(name, seed=5, speeds=False) == decisions(name, seed=5)


def test_the_speed_declaration_is_checkable_and_routers_that_price_time_keep_speeds():
    # the check above can fail: the cost router, which reads speeds, decides otherwise without
    assert decisions("cost", seed=5, speeds=False) != decisions("cost", seed=5)
    assert {n for n in ROUTERS if not reads_speeds(make_router(n))} == {
        "least_load", "power_of_two", "prefix_affinity", "d2lpm", "llumnix", "lora_affinity"}


def test_the_registry_has_every_router_of_the_design():
    assert set(ROUTERS) == {"round_robin", "least_load", "random", "power_of_two",
                            "prefix_affinity", "cost", "session", "d2lpm", "llumnix",
                            "intelligent",
                            "tetriinfer", "lora_affinity"}


def test_unknown_names_and_parameters_list_the_valid_ones():
    with pytest.raises(ValueError, match="cost, d2lpm, intelligent, least_load, llumnix"):
        make_router("fastest")
    with pytest.raises(ValueError, match="valid: cache_threshold, balance_abs_threshold"):
        make_router("prefix_affinity", cache_treshold=0.5)
