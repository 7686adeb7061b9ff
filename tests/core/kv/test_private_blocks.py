"""Private blocks (only their own request can match them) are hashed and published when the
request's KV is first freed while it goes on, not as they fill: the same decisions as eager
publication, host KV reuse included."""

from __future__ import annotations

import random
import sys

import pytest
from tests.factories import FakeExecutor, make_request, make_scheduler, run_steps

from shunter.core.clock import ManualClock


def _workload(seed: int) -> list:
    rng = random.Random(seed)
    requests = []
    for i in range(40):
        kwargs: dict = {"num_prompt_tokens": rng.choice([5, 17, 40, 90]),
                        "arrival_s": float(i)}
        if rng.random() < 0.3:  # a conversation turn: its KV is offloaded to host at the end
            kwargs["session_id"] = f"s{i % 4}"
        if rng.random() < 0.5:  # a shared prefix of 1-6 blocks, from a few families
            family = rng.randrange(3)
            kwargs["hash_ids"] = tuple(100 * family + k for k in range(rng.randint(1, 6)))
            kwargs["hash_block_size"] = 4
        requests.append((make_request(f"r{i}", **kwargs), rng.choice([1, 6, 30, 80])))
    return requests


def _run(seed: int, mode: str, *, eager: bool) -> tuple[list, int]:
    clock = ManualClock()
    reuse = mode == "swap+host-reuse"
    scheduler = make_scheduler(num_blocks=48, clock=clock,
                               preemption_mode="recompute" if mode == "recompute" else "swap",
                               num_host_blocks=0 if mode == "recompute" else 64,
                               host_kv_reuse=reuse)
    pairs = _workload(seed)
    executor = FakeExecutor({r.request_id: n for r, n in pairs})
    for request, _ in pairs:
        if eager:  # what every request did before: hash and publish each block as it fills
            request.share_all_blocks()
        assert scheduler.add_request(request) is None
    run_steps(scheduler, executor, clock)
    decisions = [(o.step_id, [(c.request_id, c.num_computed_tokens, c.num_scheduled_tokens,
                               c.block_ids) for c in o.chunks], o.swap_out, o.swap_in,
                  o.preempted_ids) for o in executor.outputs]
    return decisions, scheduler.num_preemptions


@pytest.mark.parametrize("mode", ["recompute", "swap", "swap+host-reuse"])
@pytest.mark.parametrize("seed", range(6))
def test_deferred_private_publication_decides_as_eager_publication(seed, mode):
    lazy, num_preempted = _run(seed, mode, eager=False)
    eager, _ = _run(seed, mode, eager=True)
    assert lazy == eager
    assert num_preempted > 0  # the scenario exercises frees while alive


def test_finished_requests_leave_only_shareable_hashes():
    clock = ManualClock()
    scheduler = make_scheduler(num_blocks=64, clock=clock)
    private = make_request("a", num_prompt_tokens=20)
    shared = make_request("b", num_prompt_tokens=20, hash_ids=(1, 2), hash_block_size=4)
    assert private.publish_limit == 0 and shared.publish_limit == 2
    for r in (private, shared):
        assert scheduler.add_request(r) is None
    run_steps(scheduler, FakeExecutor({"a": 9, "b": 9}), clock)
    cached = scheduler.kv.pool.cached
    assert private.block_hashes == []  # never hashed: nothing could ever have matched them
    assert len(shared.block_hashes) == 2 and all(h in cached for h in shared.block_hashes)
    assert len(cached) == 2


def test_a_preempted_request_publishes_its_private_blocks_and_finds_them_again():
    clock = ManualClock()
    scheduler = make_scheduler(num_blocks=12, clock=clock)
    a = make_request("a", num_prompt_tokens=16)
    assert scheduler.add_request(a) is None
    executor = FakeExecutor({"a": 100, "b": 2})
    out = scheduler.schedule()  # a's prompt: 4 full blocks, unpublished (private)
    scheduler.update(out, executor.execute(out))
    assert a.num_published_blocks == 0 and not scheduler.kv.pool.cached
    scheduler.running.remove(a)
    scheduler.kv.free(a, alive=True)
    assert a.publish_limit == sys.maxsize
    assert [scheduler.kv.pool.lookup(h) is not None for h in a.block_hashes] == [True] * 4
    a.num_computed_tokens = 0
    assert len(scheduler.kv.computed_blocks(a)) == 4  # all its prompt blocks come back as hits
