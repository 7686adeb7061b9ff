"""lora_affinity: a request goes where its adapter is, unless that replica is much busier."""

import pytest
from tests.factories import make_spec

from shunter.router.interface import ReplicaView
from shunter.router.registry import make_router


def view(replica_id: int, load: int, loras: set[str] = frozenset()) -> ReplicaView:
    return ReplicaView(replica_id=replica_id, num_waiting_tokens=load, num_waiting=load // 100,
                       lora_ids=frozenset(loras))


def route(router, lora: str | None, views, prompt: int = 100) -> int:
    return router.route(make_spec(lora_id=lora, num_prompt_tokens=prompt), views).replica_id


def test_goes_to_the_replica_holding_the_adapter_even_if_busier():
    router = make_router("lora_affinity")
    views = [view(0, 0), view(1, 150, {"x"}), view(2, 50, {"y"})]
    assert route(router, "x", views) == 1
    assert route(router, "y", views) == 2


def test_falls_back_to_the_least_loaded_when_the_holder_is_too_busy_or_none_holds_it():
    router = make_router("lora_affinity", max_imbalance=2.0)
    views = [view(0, 100), view(1, 500, {"x"}), view(2, 300)]
    assert route(router, "x", views) == 0  # 500 > 2 x (100 + 100)
    assert route(router, "z", views) == 0  # nobody holds z
    assert route(router, None, views) == 0  # the base model: least load


def test_among_holders_the_least_loaded_wins():
    router = make_router("lora_affinity")
    views = [view(0, 0), view(1, 300, {"x"}), view(2, 100, {"x", "y"})]
    assert route(router, "x", views) == 2


def test_bad_imbalance_is_refused_by_name():
    with pytest.raises(ValueError, match="max_imbalance"):
        make_router("lora_affinity", max_imbalance=0.5)
