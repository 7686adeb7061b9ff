from __future__ import annotations

import random

import numpy as np
import pytest

from shunter.core.types import FinishReason
from shunter.metrics import service_gap
from shunter.metrics.columns import to_columns
from shunter.metrics.fairness import jain_index, max_service_gap, tenant_weight_array
from shunter.metrics.service_events import token_units
from shunter.metrics.summary import summarize

STOP = FinishReason.STOP


def gap(records, weights=None):
    cols = to_columns(records)
    return max_service_gap(cols, tenant_weight_array(cols, weights))


def brute_force_gap(records, weights=None) -> float:
    """The docstring's definition evaluated literally at every event time (quadratic)."""
    weights = weights or {}
    credits, intervals = [], []
    for r in records:
        w = weights.get(r.tenant, 1.0)
        for i, t in enumerate(r.token_times_s):
            credits.append((t, r.tenant, (2 + (r.num_prompt_tokens if i == 0 else 0)) / w))
        end = r.finish_s
        if end is None:
            gave_up = r.finish_reason in (FinishReason.ABORT, FinishReason.REJECTED)
            end = (r.token_times_s[-1] if r.token_times_s else r.arrival_s) if gave_up else np.inf
        intervals.append((r.arrival_s, end, r.tenant))
    times = sorted({c[0] for c in credits} | {i[0] for i in intervals}
                   | {i[1] for i in intervals if np.isfinite(i[1])})
    best = 0.0
    for t in times:
        active = {tenant for a, e, tenant in intervals if a <= t < e}
        served = {x: sum(amount for ct, tenant, amount in credits if ct <= t and tenant == x)
                  for x in active}
        if served:
            best = max(best, max(served.values()) - min(served.values()))
    return best


def test_two_tenant_timeline_by_hand(make_record):
    # A: one request [0, 4), prompt 10, tokens at 1, 2, 3 -> S_A = 12, 14, 16.
    # B: one request [0.5, 3.5), prompt 4, tokens at 2.5, 3.5 -> S_B = 6 at 2.5.
    # Both backlogged on [0.5, 3.5): gap 0 at .5, 12 at 1, 14 at 2, 8 at 2.5, 10 at 3;
    # at 3.5 B is no longer backlogged. Max = 14 (at t = 2).
    records = [make_record("a", 0.0, 10, [1.0, 2.0, 3.0], 4.0, STOP, tenant="A"),
               make_record("b", 0.5, 4, [2.5, 3.5], 3.5, STOP, tenant="B")]
    assert gap(records) == 14.0
    assert summarize(records).fairness.max_service_gap == 14.0


def test_gap_on_hand_records(hand_records):
    # A: 102 at .5, 104 at .7, 106 at 1.0, 128 at 1.2 (r3's prompt + token); B: 52 at 1.0.
    # B backlogged [.5, 1.5), A [0, 1.4) and [2, 3): gaps 102, 104, 54, 76 -> 104.
    assert gap(hand_records) == 104.0
    # Weight 2 for A halves its service: 51, 52, 53 - 52 = 1, 64 - 52 = 12 -> 52.
    assert gap(hand_records, {"A": 2.0}) == 52.0


def test_only_simultaneously_backlogged_tenants_count(make_record):
    # B arrives after A finished: nobody is backlogged together, whatever the service.
    records = [make_record("a", 0.0, 100, [1.0], 1.0, STOP, tenant="A"),
               make_record("b", 2.0, 1, [3.0], 3.0, STOP, tenant="B")]
    assert gap(records) == 0.0


def test_unfinished_request_stays_backlogged(make_record):
    # A never finished: it is backlogged at t=1 when it has 12 and B has 0.
    records = [make_record("a", 0.0, 10, [1.0], None, None, tenant="A"),
               make_record("b", 0.0, 1, [2.0], 2.0, STOP, tenant="B")]
    assert gap(records) == 12.0
    records[0].finish_reason = FinishReason.ABORT  # aborted: backlog ends at its last token
    assert gap(records) == 0.0


def test_same_tenant_never_has_a_gap(make_record):
    records = [make_record(f"r{i}", i * 0.1, 50, [1.0 + i], 1.0 + i, STOP) for i in range(5)]
    assert gap(records) == 0.0
    assert gap([]) is None


def random_records(make_record, seed: int, num_requests: int, num_tenants: int):
    rng = random.Random(seed)
    out = []
    for i in range(num_requests):
        arrival = round(rng.uniform(0, 10), 1)  # coarse times so events coincide
        start = arrival + round(rng.uniform(0, 2), 1)
        tokens = [round(start + 0.1 * k, 1) for k in range(rng.randint(0, 6))]
        kind = rng.random()
        if kind < 0.1:
            rec = make_record(f"r{i}", arrival, rng.randint(1, 30), [], arrival,
                              FinishReason.REJECTED, tenant=f"t{rng.randrange(num_tenants)}")
        else:
            reason = None if kind < 0.2 else FinishReason.ABORT if kind < 0.3 else STOP
            finish = None if reason is None else (tokens[-1] if tokens else arrival)
            rec = make_record(f"r{i}", arrival, rng.randint(1, 30), tokens, finish, reason,
                              tenant=f"t{rng.randrange(num_tenants)}")
        out.append(rec)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_on_random_runs(make_record, seed):
    records = random_records(make_record, seed, num_requests=40, num_tenants=4)
    weights = {"t0": 2.0, "t3": 0.5} if seed % 2 else None
    assert gap(records, weights) == pytest.approx(brute_force_gap(records, weights))


@pytest.mark.parametrize("seed", range(3))
def test_tiny_chunks_give_the_same_gap(make_record, monkeypatch, seed):
    records = random_records(make_record, 100 + seed, num_requests=60, num_tenants=5)
    expected = gap(records)
    monkeypatch.setattr(service_gap, "GAP_CHUNK_EVENTS", 3)
    monkeypatch.setattr(service_gap, "MAX_GAP_CELLS", 4)
    assert gap(records) == pytest.approx(expected)
    assert expected == pytest.approx(brute_force_gap(records))


def test_jain_index():
    assert jain_index(np.array([5.0, 5.0, 5.0, 5.0])) == pytest.approx(1.0)
    assert jain_index(np.array([10.0, 0.0, 0.0, 0.0])) == pytest.approx(0.25)  # 1/n
    assert jain_index(np.array([1.0, 3.0])) == pytest.approx(16 / 20)  # (1+3)^2 / (2*(1+9))
    assert jain_index(np.zeros(3)) is None
    assert jain_index(np.empty(0)) is None


def test_jain_in_summary_is_weight_normalised(make_record):
    # A gets 2x B's service; with weight 2 for A the shares are equal.
    records = [make_record("a", 0.0, 6, [1.0, 2.0], 2.0, STOP, tenant="A"),  # 6 + 4 = 10
               make_record("b", 0.0, 3, [1.0], 1.0, STOP, tenant="B")]  # 3 + 2 = 5
    assert summarize(records).fairness.jain_index == pytest.approx(225 / 250)
    weighted = summarize(records, tenant_weights={"A": 2.0})
    assert weighted.fairness.jain_index == pytest.approx(1.0)


def test_back_to_back_requests_keep_a_tenant_backlogged(make_record):
    # A's first request ends at 2 exactly when its second arrives: A stays backlogged, so at
    # 2.5 (B reaches 10 + 2 = 12, A has 1 + 2 = 3) the gap is 9.
    records = [make_record("a1", 0.0, 1, [2.0], 2.0, STOP, tenant="A"),
               make_record("a2", 2.0, 1, [4.0], 4.0, STOP, tenant="A"),
               make_record("b", 0.0, 10, [2.5], 4.0, STOP, tenant="B")]
    assert gap(records) == 9.0
    records[1].arrival_s = 2.1  # now A is idle on [2, 2.1) only; still backlogged at 2.5
    assert gap(records) == 9.0
    records[1].arrival_s = 3.0  # A idle at 2.5: only the gap at 3 (12 - 3) counts
    assert gap(records) == 9.0 and brute_force_gap(records) == 9.0
    records[2].token_times_s = [2.5, 2.7]  # B has 14 at 2.7, while A is idle
    assert gap(records) == 11.0  # at 3: 14 - 3


def test_segmented_helpers():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    is_first = np.array([True, False, True, False, False])
    assert service_gap._segmented_cumsum(values, is_first).tolist() == [1, 3, 3, 7, 12]
    running = service_gap._segmented_cummax(np.array([3.0, 1.0, 2.0, 5.0, 4.0]),
                                            np.array([0, 0, 1, 1, 1]))
    assert running.tolist() == [3, 3, 2, 5, 5]


def test_token_units_sum_tokens_per_tenant_and_time(make_record):
    records = [make_record(f"a{i}", 0.0, 1, [1.0, 2.0], 2.0, STOP, tenant="A") for i in range(4)]
    records += [make_record("b", 0.0, 1, [2.0, 0.5], 2.0, STOP, tenant="B")]  # unsorted input
    units = token_units(to_columns(records))
    assert units.tenant_offsets.tolist() == [0, 2, 4]
    assert units.time_s.tolist() == [1.0, 2.0, 0.5, 2.0]
    assert units.num_tokens.tolist() == [4, 4, 1, 1]
