"""Llumnix dispatch: the freest replica, where queued prompts already count as used memory."""

import math

import pytest
from tests.factories import make_spec

from shunter.router.interface import ReplicaView
from shunter.router.policies.llumnix import freeness
from shunter.router.registry import make_router


def view(replica_id=0, **kw) -> ReplicaView:
    return ReplicaView(replica_id=replica_id, **{"num_total_blocks": 1000, "block_size": 16, **kw})


def test_freeness_by_hand():
    v = view(num_free_blocks=100, num_waiting=1, num_waiting_tokens=150, num_running=2)
    assert freeness(v) == pytest.approx((100 - 10) / 3)  # 150 waiting tokens need 10 blocks
    assert freeness(view(num_free_blocks=5)) == math.inf  # idle


def test_queued_prompts_count_as_load_before_they_take_memory():
    router = make_router("llumnix")
    roomy_but_queued = view(0, num_free_blocks=600, num_running=1, num_waiting=1,
                            num_waiting_tokens=16 * 500)  # (600 - 500) / 2 = 50
    tighter_but_idle_queue = view(1, num_free_blocks=300, num_running=2)  # 300 / 2 = 150
    assert router.route(make_spec(), [roomy_but_queued, tighter_but_idle_queue]).replica_id == 1


def test_the_batch_divides_the_free_memory():
    router = make_router("llumnix")
    vs = [view(0, num_free_blocks=400, num_running=8), view(1, num_free_blocks=300, num_running=2)]
    assert router.route(make_spec(), vs).replica_id == 1


def test_idle_replicas_win_then_most_free_blocks_then_lowest_id():
    router = make_router("llumnix")
    vs = [view(0, num_free_blocks=900, num_running=1), view(1, num_free_blocks=500),
          view(2, num_free_blocks=700), view(3, num_free_blocks=700)]
    assert router.route(make_spec(), vs).replica_id == 2
