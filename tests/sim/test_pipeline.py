"""Pipeline parallelism in the simulator: up to `pp` batches in flight through the stages."""

import random

import pytest
from tests.factories import interpreted_only

from shunter.config import scenario_from_dict
from shunter.core.sched.scheduler import CoreScheduler
from shunter.core.types import RequestSpec
from shunter.errors import ConfigError
from shunter.sim.config import SimConfig
from shunter.sim.pipeline import Pipeline
from shunter.sim.runner import simulate

SMALL = {"model": "llama-3.1-8b", "gpu": "a100-80gb"}


def burst(n: int, *, prompt: int = 500, output: int = 100) -> list[RequestSpec]:
    """`n` requests at t = 0: the replica saturated until the last finishes."""
    return [RequestSpec(request_id=f"r{i}", arrival_s=0.0, num_prompt_tokens=prompt,
                        num_output_tokens=output) for i in range(n)]


def varied(seed: int, n: int = 150, rate: float = 20.0) -> list[RequestSpec]:
    rng = random.Random(seed)
    t, specs = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        specs.append(RequestSpec(request_id=f"r{i}", arrival_s=t,
                                 num_prompt_tokens=rng.choice([20, 300, 1500, 5000]),
                                 num_output_tokens=rng.choice([1, 3, 40, 200]),
                                 priority=rng.randint(0, 2), tenant=f"t{i % 3}"))
    return specs


def fingerprint(run) -> list:
    return [(r.request_id, r.replica_id, r.finish_reason, list(r.token_times_s),
             r.first_scheduled_s, r.finish_s, r.num_preemptions) for r in run.records]


def test_pipeline_places_batches_stage_after_stage():
    pipe = Pipeline(2)
    assert pipe.place(0.0, [1.0, 2.0]) == (0.0, 3.0)
    # the next batch enters stage 0 as soon as it frees, then waits for stage 1
    assert pipe.place(0.5, [1.0, 2.0]) == (1.0, 5.0)
    # a batch ready later than the first stage frees starts when ready
    assert pipe.place(4.0, [0.5, 0.5]) == (4.0, 5.5)


def test_saturated_throughput_up_unloaded_latency_up():
    # same GPUs per stage (tp = 1): two stages serve more tokens per second at saturation
    one = simulate(SimConfig(**SMALL), burst(300))
    two = simulate(SimConfig(**SMALL, pp=2), burst(300))
    makespan = [max(r.finish_s for r in run.records) for run in (one, two)]
    assert makespan[1] < makespan[0] / 1.3
    # ...while a lone request's token takes longer: every stage plus the activation send
    tpot = []
    for pp in (1, 2):
        (record,) = simulate(SimConfig(**SMALL, pp=pp), burst(1)).records
        times = record.token_times_s
        tpot.append((times[-1] - times[0]) / (len(times) - 1))
    assert tpot[1] > tpot[0]


@interpreted_only
def test_a_batch_in_flight_is_never_rescheduled(monkeypatch):
    overlapped = []
    schedule = CoreScheduler.schedule

    def checked(self: CoreScheduler):
        output = schedule(self)
        ids = {chunk.request_id for chunk in output.chunks}
        assert not ids & self.in_flight_ids, "a request of a batch in flight was scheduled"
        assert not set(output.preempted_ids) & self.in_flight_ids
        overlapped.append(bool(self.in_flight_ids) and bool(ids))
        return output

    monkeypatch.setattr(CoreScheduler, "schedule", checked)
    config = SimConfig(**SMALL, pp=3, num_blocks=400, record_steps=True,
                       scheduler={"max_num_seqs": 24, "max_num_batched_tokens": 1024})
    run = simulate(config, varied(1))
    assert sum(overlapped) > 50  # batches really were scheduled while others ran
    # at most pp batches in flight at any time
    events = sorted([(end, -1) for _, _, end, *_ in run.step_log]
                    + [(start, 1) for _, start, *_ in run.step_log])  # (ends first at a tie)
    in_flight = most = 0
    for _, change in events:
        in_flight += change
        most = max(most, in_flight)
    assert most == 3
    assert len(run.records) == 150 and all(r.finish_reason is not None for r in run.records)


def test_deterministic_and_fast_path_setting_changes_nothing():
    config = SimConfig(**SMALL, pp=2, num_replicas=2, num_blocks=500,
                       scheduler={"max_num_seqs": 32})
    first = fingerprint(simulate(config, varied(2)))
    assert fingerprint(simulate(config, varied(2))) == first
    # bulk decode runs are off through a pipeline: fast_forward on and off agree exactly
    off = SimConfig(**SMALL, pp=2, num_replicas=2, num_blocks=500, fast_forward=False,
                    scheduler={"max_num_seqs": 32})
    assert fingerprint(simulate(off, varied(2))) == first


def test_pp_1_changes_nothing():
    specs = varied(3)
    assert (fingerprint(simulate(SimConfig(**SMALL, pp=1, num_blocks=500), specs))
            == fingerprint(simulate(SimConfig(**SMALL, num_blocks=500), specs)))


def test_settings_refused_naming_pp():
    with pytest.raises(ValueError, match="pp must be"):
        SimConfig(pp=0)
    with pytest.raises(ValueError, match="pp must be"):
        SimConfig(pp=True)
    with pytest.raises(ConfigError, match="pp=33"):
        SimConfig(model="llama-3.1-8b", pp=33)
    with pytest.raises(ValueError, match="pp needs the roofline"):
        SimConfig(pp=2, cost_model="profile")
    with pytest.raises(ValueError, match="pp=2 is not modelled with disaggregation"):
        SimConfig(pp=2, disaggregation=True, num_replicas=2)
    with pytest.raises(ConfigError, match="dense models only"):
        SimConfig(model="mixtral-8x7b", gpu="h100", tp=2, pp=2)


def test_scenario_key():
    assert scenario_from_dict({"cluster": {"pp": 2}}).sim.pp == 2
    with pytest.raises(ConfigError, match="ppp"):
        scenario_from_dict({"cluster": {"ppp": 2}})
    with pytest.raises(ConfigError, match="pp"):
        scenario_from_dict({"cluster": {"pp": "two"}})


def test_an_arrival_waits_while_the_engine_blocks_on_its_oldest_batch():
    # vLLM's engine with nothing more to schedule blocks on its oldest batch: a request that
    # arrives meanwhile is scheduled when that batch is applied, not at once
    first = RequestSpec(request_id="a", arrival_s=0.0, num_prompt_tokens=2000, num_output_tokens=5)
    second = RequestSpec(request_id="b", arrival_s=0.01, num_prompt_tokens=20, num_output_tokens=5)
    records = {r.request_id: r for r in simulate(SimConfig(**SMALL, pp=2), [first, second]).records}
    a_first_token_s = records["a"].token_times_s[0]
    assert a_first_token_s > 0.05
    assert records["b"].first_scheduled_s == a_first_token_s
