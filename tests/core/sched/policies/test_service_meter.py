"""`ServiceMeter.charge_tenants` (a step's charges inlined, for VTC) equals `charge` of each
chunk in turn, divided by the tenant's weight, to the bit; and the fast paths a runtime reaches
through `step_charger` and `victim_sort_key` equal the plain hooks."""

import random

import pytest
from tests.factories import make_request

from shunter.core.sched.policies.service import ServiceMeter
from shunter.core.sched.policies.vtc import VtcPolicy
from shunter.core.sched.policy import never_preempts, step_charger, victim_sort_key
from shunter.core.sched.registry import make_policy


def _chunks(seed: int) -> list[list[tuple[int, int, int]]]:
    """Steps of (request index, computed tokens, chunk) with prefill chunks, decodes, cache hits
    (a first chunk starting past 0) and recomputes (computed tokens falling back to 0)."""
    rng = random.Random(seed)
    computed = [0] * 12
    steps = []
    for _ in range(60):
        step = []
        for i in rng.sample(range(12), 5):
            if rng.random() < 0.05:
                computed[i] = 0  # preempted: recomputes from the start
            elif computed[i] == 0 and rng.random() < 0.3:
                computed[i] = rng.randrange(1, 20)  # prefix-cache hit
            chunk = rng.choice([1, 1, 1, 3, 17])
            step.append((i, computed[i], chunk))
            computed[i] += chunk
        steps.append(step)
    return steps


@pytest.mark.parametrize("skip_cached", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_charge_tenants_equals_charge_of_each_chunk_to_the_bit(skip_cached: bool,
                                                              seed: int) -> None:
    weights = {"a": 0.3, "b": 1.7}  # fractional: the order of additions shows in the bits
    requests = [make_request(f"r{i}", num_prompt_tokens=10 + 7 * i, tenant="abc"[i % 3])
                for i in range(12)]
    one, many = ServiceMeter(skip_cached=skip_cached), ServiceMeter(skip_cached=skip_cached)
    by_one: dict[str, float] = {}
    by_many: dict[str, float] = {}
    for step in _chunks(seed):
        scheduled = []
        for i, computed, chunk in step:
            requests[i].num_computed_tokens = computed
            service = one.charge(requests[i], chunk)
            if service:
                tenant = requests[i].tenant
                by_one[tenant] = by_one.get(tenant, 0.0) + service / weights.get(tenant, 1.0)
            scheduled.append((requests[i], chunk))
        for i, computed, _ in step:
            requests[i].num_computed_tokens = computed
        many.charge_tenants(scheduled, by_many, weights)
    assert by_many == by_one and set(by_one) == {"a", "b", "c"}


def test_runtimes_fast_paths_equal_the_plain_hooks() -> None:
    plain, fast = VtcPolicy(tenant_weights={"a": 0.5}), VtcPolicy(tenant_weights={"a": 0.5})
    requests = [make_request(f"r{i}", num_prompt_tokens=9, tenant="ab"[i % 2], priority=i % 3)
                for i in range(6)]
    for step in range(5):
        for r in requests:
            r.num_computed_tokens = 9 * min(step, 1) + max(0, step - 1)
        for r in requests:
            plain.on_scheduled(r, 9 if step == 0 else 1, 0.0)
        step_charger(fast)([(r, 9 if step == 0 else 1) for r in requests], 0.0)
        assert fast.counters == plain.counters
        key = victim_sort_key(fast, 1.0)
        assert [key(r) for r in requests] == [plain.victim_key(r, 1.0) for r in requests]
    assert never_preempts(fast) and never_preempts(make_policy("dlpm"))
    assert not never_preempts(make_policy("priority")) and not never_preempts(make_policy("mlfq"))
