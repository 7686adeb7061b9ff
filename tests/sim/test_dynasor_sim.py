"""Dynasor in the simulator: probes come from the reasoning trace, bulk decode runs end before
each probe step (so stepping one by one gives the same records), and early exit saves tokens."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.factories import interpreted_only

from shunter.core.types import FinishReason
from shunter.sim import replica as replica_module
from shunter.sim.config import SimConfig
from shunter.sim.decode_run import advance_decode_run
from shunter.sim.runner import simulate
from shunter.workload.reasoning import ReasoningShape, reasoning_programs


def workload(seed: int = 3, n: int = 40, rate: float | None = 1.5):
    shape = ReasoningShape(num_branches=6, output_median_tokens=200, max_output_tokens=800)
    return reasoning_programs(n, rate=rate, seed=seed, shape=shape)


def fingerprint(run) -> list:
    return [(r.request_id, r.replica_id, r.finish_reason, r.token_times_s, r.first_scheduled_s,
             r.finish_s, r.num_preemptions, r.num_cached_tokens) for r in run.records]


SCENARIOS = {
    "default": SimConfig(policy="dynasor", scheduler={"max_num_seqs": 24}),
    "two-replicas-fcfs-order": SimConfig(num_replicas=2, router="least_load", policy="dynasor",
                                         policy_params={"order": "fcfs", "probe_tokens": 48},
                                         scheduler={"max_num_seqs": 16}),
    "memory-pressure": SimConfig(num_blocks=200, policy="dynasor",
                                 scheduler={"max_num_seqs": 32}),
    "swap": SimConfig(num_blocks=200, policy="dynasor",
                      scheduler={"max_num_seqs": 32, "preemption_mode": "swap"}),
    "hard-deprioritized": SimConfig(policy="dynasor", scheduler={"max_num_seqs": 12},
                                    policy_params={"budget_tokens": 96, "low_certainty": 0.4}),
    "hard-capped": SimConfig(policy="dynasor", scheduler={"max_num_seqs": 12},
                             policy_params={"budget_tokens": 96, "stop_hard": True}),
    "probe-every-token-multiple": SimConfig(policy="dynasor", policy_params={"probe_tokens": 7},
                                            scheduler={"max_num_seqs": 24}),
    "migration": SimConfig(num_replicas=2, policy="dynasor", scheduler={"max_num_seqs": 12},
                           migration={"interval_s": 0.2, "out_threshold": 20.0,
                                      "in_threshold": 40.0}),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fast_forward_equals_step_by_step(name):
    specs = workload().specs
    fast = simulate(replace(SCENARIOS[name], fast_forward=True), specs)
    slow = simulate(replace(SCENARIOS[name], fast_forward=False), specs)
    assert fingerprint(fast) == fingerprint(slow)
    assert fast.num_preemptions == slow.num_preemptions
    assert any(r.finish_reason == FinishReason.EARLY_STOP for r in fast.records)


@interpreted_only
def test_runs_are_taken_between_probe_points_and_never_across_one(monkeypatch):
    bulk: list[tuple[int, int]] = []  # (run steps, output tokens of a run request before it)

    def counting(scheduler, num_steps, stopped):
        r = scheduler.running[0]
        bulk.append((num_steps, r.num_output_tokens))
        return advance_decode_run(scheduler, num_steps, stopped)

    monkeypatch.setattr(replica_module, "advance_decode_run", counting)
    run = simulate(replace(SCENARIOS["default"], record_steps=True), workload().specs)
    assert sum(n for n, _ in bulk) > len(run.step_log) / 3  # the fast path still does most
    # a run's tokens stay below the next multiple of 32: the probe step is a real one
    assert all((before % 32) + n < 32 for n, before in bulk)


def test_dynasor_generates_fewer_tokens_than_fcfs_and_records_show_where_each_stopped():
    work = workload(seed=5, n=60, rate=None)  # a batch
    # SGLang's prefix rule keeps a program's branches (one shared prompt) on one replica, where
    # its policy sees them all (each replica's dynasor knows only its own branches)
    config = SimConfig(num_replicas=2, router="prefix_affinity", scheduler={"max_num_seqs": 48})
    runs = {policy: simulate(replace(config, policy=policy), work.specs)
            for policy in ("fcfs", "dynasor")}
    tokens = {policy: sum(r.num_output_tokens for r in run.records)
              for policy, run in runs.items()}
    replicas: dict[str | None, set[int | None]] = {}
    for r in runs["dynasor"].records:
        replicas.setdefault(r.program_id, set()).add(r.replica_id)
    assert all(len(ids) == 1 for ids in replicas.values())
    assert all(n > 0 for n in runs["dynasor"].num_routed)  # both replicas served programs
    assert tokens["fcfs"] == work.num_output_tokens  # every branch to its natural end
    assert tokens["dynasor"] < 0.8 * tokens["fcfs"]
    natural = {b.request_id: b.num_output_tokens for b in work.specs}
    early = [r for r in runs["dynasor"].records if r.finish_reason == FinishReason.EARLY_STOP]
    assert early and all(r.is_completed for r in early)
    assert all(r.num_output_tokens < natural[r.request_id] for r in early)
    assert all(r.num_output_tokens == natural[r.request_id] for r in runs["dynasor"].records
               if r.finish_reason == FinishReason.STOP)
    # a program stops all its live branches at once: none of its branches goes on after
    stop_s: dict[str | None, float] = {}
    for r in early:
        stop_s[r.program_id] = max(stop_s.get(r.program_id, 0.0), r.finish_s)
    assert all(r.finish_s <= stop_s[r.program_id] for r in runs["dynasor"].records
               if r.program_id in stop_s)
    assert len(stop_s) > len(work.programs) / 2

def test_a_gateway_tier_refuses_dynasor():
    with pytest.raises(ValueError, match="dynasor.*engine|engine.*dynasor"):
        simulate(SimConfig(gateway_policy="dynasor", gateway_max_inflight=4), workload().specs)
