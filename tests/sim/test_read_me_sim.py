"""read_me in the simulator: expert profiles change step costs, decode runs stay exact."""

import pytest
from tests.factories import interpreted_only
from tests.sim.test_fast_forward import fingerprint, varied_workload

from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate
from shunter.workload.experts import ExpertRouting, with_expert_profiles

MIXTRAL = {"model": "mixtral-8x7b", "gpu": "a100-80gb", "tp": 2}


def profiled(seed: int = 3, n: int = 120, rate: float = 6.0):
    return with_expert_profiles(varied_workload(seed, n, rate), ExpertRouting(num_experts=8),
                                seed=seed)


@pytest.mark.parametrize("policy", ["fcfs", "read_me"])
@pytest.mark.parametrize("seats", [256, 8])
def test_fast_forward_equals_step_by_step_with_profiles(policy, seats):
    specs = profiled()
    runs = [simulate(SimConfig(**MIXTRAL, policy=policy, fast_forward=ff,
                               scheduler={"max_num_seqs": seats}), specs)
            for ff in (True, False)]
    assert fingerprint(runs[0]) == fingerprint(runs[1])


@interpreted_only
def test_profiles_change_the_cost_and_runs_still_happen(monkeypatch):
    """Profiled decode runs take their own line (not the uniform one) and are still taken."""
    from shunter.sim import executor as executor_module
    calls = []
    original = executor_module.SimExecutor._routed_line

    def spy(self, num_decodes, request_ids):
        calls.append(len(request_ids))
        return original(self, num_decodes, request_ids)
    monkeypatch.setattr(executor_module.SimExecutor, "_routed_line", spy)
    specs = profiled()
    with_profiles = simulate(SimConfig(**MIXTRAL), specs)
    assert calls and all(calls)  # decode runs over profiled requests
    plain = simulate(SimConfig(**MIXTRAL), varied_workload(3, 120, 6.0))
    # concentrated profiles hit fewer experts than uniform routing: every request ends sooner
    assert sum(r.finish_s for r in with_profiles.records) < sum(r.finish_s for r in plain.records)


def test_same_seed_same_records_and_fcfs_without_profiles():
    specs = profiled()
    config = SimConfig(**MIXTRAL, policy="read_me", scheduler={"max_num_seqs": 8})
    assert fingerprint(simulate(config, specs)) == fingerprint(simulate(config, specs))
    plain = varied_workload(3, 120, 6.0)
    fcfs = SimConfig(**MIXTRAL, policy="fcfs", scheduler={"max_num_seqs": 8})
    assert fingerprint(simulate(config, plain)) == fingerprint(simulate(fcfs, plain))


def test_read_me_lowers_decode_cost_on_a_queued_engine():
    specs = with_expert_profiles(varied_workload(5, 300, 12.0), ExpertRouting(num_experts=8),
                                 seed=5)

    def mean_decode_step_s(policy: str) -> float:
        run = simulate(SimConfig(**MIXTRAL, policy=policy, record_steps=True,
                                 scheduler={"max_num_seqs": 16}), specs)
        steps = [end - start for _, start, end, prefill, decodes, _ in run.step_log
                 if prefill == 0 and decodes >= 8]
        return sum(steps) / len(steps)
    assert mean_decode_step_s("read_me") < 0.97 * mean_decode_step_s("fcfs")
