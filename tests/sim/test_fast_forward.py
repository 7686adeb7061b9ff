"""Decode runs applied in bulk must give exactly what stepping one by one gives."""

import random
import zlib
from dataclasses import replace

import numpy as np
import pytest
from tests.factories import interpreted_only

from shunter.core.types import RequestSpec
from shunter.sim import replica as replica_module
from shunter.sim.config import SimConfig
from shunter.sim.decode_run import advance_decode_run
from shunter.sim.runner import simulate
from shunter.workload.staged_program import ProgramShape, TurnPool, staged_programs


def varied_workload(seed: int, n: int = 120, rate: float = 6.0, shared: bool = False) -> list[RequestSpec]:
    rng = random.Random(seed)
    t = 0.0
    specs = []
    for i in range(n):
        t += rng.expovariate(rate)
        prompt = rng.choice([20, 150, 700, 2500])
        ids = None
        if shared:  # a few shared system prompts, Mooncake-style 512-token ids
            ids = (rng.randint(0, 3),) + tuple(1000 * i + j for j in range(prompt // 512))
        specs.append(RequestSpec(
            request_id=f"r{i}", arrival_s=t, num_prompt_tokens=prompt,
            num_output_tokens=rng.choice([1, 2, 17, 64, 300]),
            max_output_tokens=rng.choice([None, None, 40]), priority=rng.randint(0, 3),
            tenant=f"t{i % 3}", hash_ids=ids, hash_block_size=512))
    return specs


def fingerprint(run) -> list:
    return [(r.request_id, r.replica_id, r.finish_reason, r.token_times_s, r.first_scheduled_s,
             r.finish_s, r.num_preemptions, r.num_cached_tokens) for r in run.records]


SCENARIOS = {
    "fcfs": SimConfig(num_replicas=2),
    "priority-aging": SimConfig(num_replicas=2, policy="priority", policy_params={"aging_s": 2.0}),
    "memory-pressure": SimConfig(num_blocks=300, scheduler={"max_num_seqs": 64}),
    "swap": SimConfig(num_blocks=300, scheduler={"preemption_mode": "swap"}),
    "prefill-first": SimConfig(scheduler={"enable_chunked_prefill": False}),
    "small-budget": SimConfig(num_replicas=3, router="round_robin",
                              scheduler={"max_num_batched_tokens": 256, "max_num_seqs": 8}),
    "whole-admission": SimConfig(num_blocks=400, scheduler={"admission": "whole"}),
    "tp-70b": SimConfig(model="llama-2-70b", tp=2, num_replicas=2),
    "sjf-oracle": SimConfig(num_blocks=400, policy="sjf", predictor="oracle",
                            policy_params={"preemptive": True}),
    "ltr-noisy": SimConfig(num_replicas=2, policy="ltr", predictor="noisy_oracle",
                           predictor_params={"kendall_tau": 0.5, "seed": 3},
                           scheduler={"max_num_seqs": 8}),
    "mlfq": SimConfig(num_blocks=300, policy="mlfq", policy_params={"promote_s": 5.0}),
    "mlfq-few-seqs": SimConfig(policy="mlfq", scheduler={"max_num_seqs": 4},
                               policy_params={"base_quantum_tokens": 4, "promote_s": None}),
    "aios-rr-swap": SimConfig(num_blocks=300, policy="aios_rr", policy_params={"time_slice_tokens": 16},
                              scheduler={"max_num_seqs": 8, "preemption_mode": "swap"}),
    "sarathi": SimConfig(policy="sarathi", policy_params={"tbt_slo_s": 0.08},
                         scheduler={"max_num_seqs": 64}),
    "vtc": SimConfig(num_blocks=300, policy="vtc", scheduler={"max_num_seqs": 16}),
    "dlpm": SimConfig(num_blocks=300, policy="dlpm", policy_params={"quantum": 2048.0},
                      scheduler={"max_num_seqs": 16}),
    "lpm": SimConfig(num_blocks=300, policy="lpm", scheduler={"max_num_seqs": 16}),
    "plas": SimConfig(num_blocks=300, policy="plas",
                      policy_params={"first_level_service": 512.0, "aging_s": 5.0}),
    "fastswitch": SimConfig(num_blocks=300, policy="fastswitch",
                            policy_params={"quantum_tokens": 64.0},
                            scheduler={"preemption_mode": "swap"}),
    "fastswitch-host-reuse": SimConfig(num_blocks=300, policy="fastswitch",
                                       policy_params={"quantum_tokens": 64.0},
                                       scheduler={"preemption_mode": "swap",
                                                  "host_kv_reuse": True}),
    "host-tier-all": SimConfig(num_blocks=300, swap_space_gib=0.02,
                               scheduler={"host_kv_reuse": True, "host_kv_offload": "all"}),
    "length-grouped": SimConfig(num_blocks=400, policy="length_grouped", predictor="noisy_oracle",
                                predictor_params={"kendall_tau": 0.5, "seed": 3},
                                policy_params={"bin_tokens": 32, "vbs_batch_sizes": [8, 4]}),
    "length-grouped-continuous": SimConfig(num_blocks=300, policy="length_grouped",
                                           predictor="noisy_oracle", scheduler={"max_num_seqs": 8},
                                           policy_params={"static_batches": False, "bin_tokens": 16}),
    # the gateway tier releases requests into running replicas (cutting their runs)
    "gateway-vtc": SimConfig(num_replicas=2, router="least_load", gateway_max_inflight=5),
    "gateway-sjf-on-mlfq": SimConfig(num_replicas=2, policy="mlfq", gateway_policy="sjf",
                                     predictor="oracle", gateway_max_inflight=3),
    "gateway-dlpm": SimConfig(num_replicas=2, router="cost", gateway_policy="dlpm",
                              gateway_params={"quantum": 4096.0}, gateway_max_inflight=4),
    "gateway-plas": SimConfig(num_replicas=2, policy="plas", gateway_policy="plas",
                              gateway_max_inflight=6),
    # prediction cost as server time holds a replica between steps; as external cost it
    # delays the request's entry (here into the gateway tier)
    "skippredict-server": SimConfig(num_replicas=2, policy="skippredict", predictor="skip_oracle",
                                    predictor_params={"threshold_tokens": 40, "seed": 2,
                                                      "cheap_error_rate": 0.2,
                                                      "expensive_kendall_tau": 0.5,
                                                      "cheap_cost_s": 0.002,
                                                      "expensive_cost_s": 0.02,
                                                      "cost_mode": "server"},
                                    scheduler={"max_num_seqs": 8}),
    "gateway-skippredict-external": SimConfig(num_replicas=2, gateway_policy="skippredict",
                                              predictor="skip_oracle", gateway_max_inflight=3,
                                              predictor_params={"threshold_tokens": 40,
                                                                "cheap_cost_s": 0.01,
                                                                "expensive_cost_s": 0.1}),
    "gateway-length-grouped": SimConfig(num_replicas=2, policy="length_grouped",
                                        gateway_policy="length_grouped", predictor="oracle",
                                        gateway_params={"static_batches": False},
                                        gateway_max_inflight=4),
    # prefill pool in 512-token chunks, decodes placed by predicted length (TetriInfer)
    "tetriinfer": SimConfig(num_replicas=3, num_blocks=400, topology="tetriinfer",
                            decode_router_params={"predictor": "oracle", "num_choices": 0}),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("shared", [False, True])
def test_fast_forward_equals_step_by_step(name, shared):
    config = SCENARIOS[name]
    specs = varied_workload(seed=zlib.crc32(name.encode()) % 1000, shared=shared)
    fast = simulate(replace(config, fast_forward=True), specs)
    slow = simulate(replace(config, fast_forward=False), specs)
    assert fingerprint(fast) == fingerprint(slow)
    assert fast.num_preemptions == slow.num_preemptions
    assert fast.num_routed == slow.num_routed


def test_fast_forward_actually_skips_steps():
    specs = varied_workload(seed=1, n=60, rate=2.0)
    config = SimConfig(record_steps=True)
    fast = simulate(config, specs)
    slow = simulate(replace(config, fast_forward=False), specs)
    assert fast.step_log == slow.step_log  # the same steps, with the same times
    assert len(fast.step_log) > 1000


def synthetic_programs(seed: int = 4):
    """Multi-threaded programs (stages of parallel calls behind barriers) from synthetic turns."""
    pool = TurnPool(task_tokens=np.array([40, 300, 900]), user_tokens=np.array([20, 60, 200]),
                    output_tokens=np.array([3, 30, 120, 400]))
    return staged_programs(pool, num_programs=40, rate=1.5, seed=seed,
                           shape=ProgramShape(max_stages=5, max_fan_out=6))


@pytest.mark.parametrize("policy", ["plas", "fcfs"])
def test_fast_forward_equals_step_by_step_on_agent_programs(policy):
    workload = synthetic_programs()
    config = SimConfig(num_blocks=600, policy=policy, scheduler={"max_num_seqs": 8},
                       policy_params={"first_level_service": 256.0} if policy == "plas" else {})
    runs = [simulate(replace(config, fast_forward=ff), workload.first_calls,
                     follow_ups=workload.follow_ups) for ff in (True, False)]
    assert fingerprint(runs[0]) == fingerprint(runs[1])
    assert len(runs[0].records) == workload.num_calls


FULL_SEATS = {
    "plas": SimConfig(policy="plas", policy_params={"first_level_service": 512.0},
                      scheduler={"max_num_seqs": 4}),
    "vtc": SimConfig(policy="vtc", scheduler={"max_num_seqs": 4}),
    "mlfq-few-seqs": SCENARIOS["mlfq-few-seqs"],
    "aios-rr": SimConfig(policy="aios_rr", policy_params={"time_slice_tokens": 24},
                         scheduler={"max_num_seqs": 4}),
    "small-budget": SCENARIOS["small-budget"],
    "fastswitch": SimConfig(policy="fastswitch", policy_params={"quantum_tokens": 96.5},
                            scheduler={"max_num_seqs": 4, "preemption_mode": "swap"}),
    "dlpm": SimConfig(policy="dlpm", policy_params={"quantum": 1024.0},
                      scheduler={"max_num_seqs": 4}),
    "lpm": SimConfig(policy="lpm", scheduler={"max_num_seqs": 4}),
}


@pytest.mark.parametrize("name", ["plas", "vtc", "fastswitch", "dlpm", "lpm", "aios-rr"])
def test_fast_forward_equals_step_by_step_with_full_seats(name):
    specs = varied_workload(seed=7, n=100, rate=8.0)
    fast = simulate(replace(FULL_SEATS[name], fast_forward=True), specs)
    slow = simulate(replace(FULL_SEATS[name], fast_forward=False), specs)
    assert fingerprint(fast) == fingerprint(slow)


@interpreted_only
@pytest.mark.parametrize("name", sorted(FULL_SEATS))
def test_runs_also_cover_reordering_policies_and_full_seats(name, monkeypatch):
    """plas, vtc, mlfq, fastswitch, dlpm, lpm: runs capped at the next reordering; with every seat taken, waiting
    requests no longer stop runs."""
    bulk = []

    def counting(scheduler, num_steps, stopped):
        bulk.append(num_steps)
        return advance_decode_run(scheduler, num_steps, stopped)

    monkeypatch.setattr(replica_module, "advance_decode_run", counting)
    config = replace(FULL_SEATS[name], record_steps=True)
    run = simulate(config, varied_workload(seed=2, n=80, rate=8.0))
    assert sum(bulk) > len(run.step_log) / 3, (sum(bulk), len(run.step_log))
