"""TetriInfer: the length-aware decode router, the `tetriinfer` topology, a simulated run."""

from collections import Counter

import pytest
from tests.factories import make_spec

from shunter.config import scenario_from_dict
from shunter.errors import ConfigError
from shunter.router.interface import ReplicaView
from shunter.router.policies.tetriinfer import (
    LengthBucketPredictor,
    TetriInferRouter,
    fit_length_buckets,
    table_key,
)
from shunter.router.registry import make_router
from shunter.sim.config import TETRIINFER_CHUNK_TOKENS, SimConfig
from shunter.sim.runner import build_cluster, simulate


def views(n: int, **kw) -> list[ReplicaView]:
    return [ReplicaView(replica_id=i, num_total_blocks=1000, num_free_blocks=1000,
                        decode_step_s=0.01, **kw) for i in range(n)]


def heavy(i: int, at_s: float = 0.0):
    return make_spec(f"h{i}", arrival_s=at_s, num_prompt_tokens=40, num_output_tokens=900)


def light(i: int, at_s: float = 0.0):
    return make_spec(f"l{i}", arrival_s=at_s, num_prompt_tokens=3000, num_output_tokens=50)


def test_heavy_decodes_do_not_pile_up():
    router = TetriInferRouter(predictor="oracle", num_choices=0)
    pool = views(3)
    placed = [router.route(spec, pool).replica_id
              for spec in (heavy(0), heavy(1), light(0), heavy(2), heavy(3))]
    # two heavies take replicas 0 and 1; the light goes where no work is (2); the third heavy
    # goes where no heavy is (2, beside the light), the fourth back to the least work (0 or 1)
    assert placed[:4] == [0, 1, 2, 2]
    assert placed[4] in (0, 1)
    assert max(Counter(placed[i] for i in (0, 1, 3, 4)).values()) == 2


def test_light_request_goes_to_least_predicted_work():
    router = TetriInferRouter(predictor="oracle", num_choices=0)
    pool = views(2)
    assert router.route(heavy(0), pool).replica_id == 0
    assert router.route(light(0), pool).replica_id == 1
    assert router.route(light(1), pool).replica_id == 1  # 2 light decodes < 1 heavy's work


def test_ledger_forgets_decodes_after_their_predicted_time():
    router = TetriInferRouter(predictor="oracle", num_choices=0)
    pool = views(2)
    assert router.route(heavy(0), pool).replica_id == 0  # bucket 4 -> 900 tokens x 10 ms = 9 s
    assert router.route(heavy(1, at_s=5.0), pool).replica_id == 1
    assert router.route(heavy(2, at_s=9.5), pool).replica_id == 0  # h0's 9 s are over
    assert len(router.live(0, 9.5)) == 1 and len(router.live(1, 9.5)) == 1


def test_full_replicas_are_skipped():
    router = TetriInferRouter(predictor="oracle", num_choices=0)
    pool = [ReplicaView(replica_id=0, num_total_blocks=100, num_free_blocks=1),
            ReplicaView(replica_id=1, num_total_blocks=100, num_free_blocks=100, num_running=9)]
    assert {router.route(heavy(i), pool).replica_id for i in range(4)} == {1}


def test_power_of_two_samples_two_and_is_seeded():
    def placements(seed: int) -> list[int]:
        router = TetriInferRouter(predictor="oracle", seed=seed)
        return [router.route(heavy(i), views(8)).replica_id for i in range(40)]

    assert placements(3) == placements(3)
    assert placements(3) != placements(4)
    assert len(set(placements(3))) > 4


def test_table_predictor_buckets_by_task_and_prompt_bin():
    train = ([make_spec(f"s{i}", num_prompt_tokens=3000, num_output_tokens=100, tenant="sum")
              for i in range(5)]
             + [make_spec(f"c{i}", num_prompt_tokens=30, num_output_tokens=700 + i, tenant="chat")
                for i in range(3)])
    table = fit_length_buckets(train, bucket_tokens=200)
    assert table[table_key("sum", 12)] == 0 and table[table_key("chat", 5)] == 3
    assert table[table_key("*", "*")] == 0  # the trace's most frequent bucket
    predictor = LengthBucketPredictor(table, 200)
    assert predictor.bucket(make_spec(num_prompt_tokens=3000, tenant="sum")) == 0
    assert predictor.bucket(make_spec(num_prompt_tokens=30, tenant="new")) == 3  # bin, any tenant
    assert predictor.bucket(make_spec(num_prompt_tokens=300_000, tenant="new")) == 0  # whole trace
    assert predictor.predicted_tokens(make_spec(num_prompt_tokens=30, tenant="chat")) == 700
    assert predictor.predicted_tokens(make_spec(num_prompt_tokens=30, tenant="chat",
                                                max_output_tokens=64)) == 64
    untrained = LengthBucketPredictor()
    assert untrained.bucket(make_spec(num_prompt_tokens=30)) == 1  # 256 tokens -> light


@pytest.mark.parametrize(("params", "match"), [
    ({"predictor": "psychic"}, "predictor must be one of table, oracle"),
    ({"predictor": "oracle", "table": {"*/*": 1}}, "drop table"),
    ({"heavy_decode_tokens": 0}, "heavy_decode_tokens"),
    ({"num_choices": -1}, "num_choices"),
    ({"table": {"no-slash": 1}}, "tenant/bin"),
    ({"table": {"*/*": -2}}, "table"),
    ({"max_kv_usage": 1.5}, "max_kv_usage"),
])
def test_bad_router_params_name_the_setting(params, match):
    with pytest.raises(ValueError, match=match):
        make_router("tetriinfer", **params)


def test_topology_expands_to_chunked_disaggregation_with_its_router():
    config = SimConfig(num_replicas=4, topology="tetriinfer")
    assert config.disaggregation and config.decode_router == "tetriinfer"
    assert config.scheduler["max_num_batched_tokens"] == TETRIINFER_CHUNK_TOKENS
    own = SimConfig(num_replicas=4, topology="tetriinfer", decode_router="least_load",
                    scheduler={"max_num_batched_tokens": 1024})
    assert own.decode_router == "least_load" and own.scheduler["max_num_batched_tokens"] == 1024


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_replicas": 4, "num_prefill_replicas": 4},
     r"topology 'tetriinfer' needs >= 1 prefill and >= 1 decode replica; got "
     r"num_prefill_replicas = 4 of 4"),
    ({"num_replicas": 1}, r"topology 'tetriinfer' needs .* of 1 replicas"),
    ({"num_replicas": 2, "scheduler": {"enable_chunked_prefill": False}},
     "enable_chunked_prefill must be true"),
    ({"num_replicas": 2, "gateway_max_inflight": 4}, "gateway tier in front of disaggregated"),
])
def test_bad_topology_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimConfig(topology="tetriinfer", **kwargs)
    with pytest.raises(ValueError, match="unknown topology 'tetris'; valid: tetriinfer"):
        SimConfig(num_replicas=2, topology="tetris")


def test_scenario_file_selects_the_topology():
    scenario = scenario_from_dict({"cluster": {
        "replicas": 3, "topology": "tetriinfer", "num_prefill_replicas": 1,
        "decode_router_params": {"predictor": "oracle"}}})
    assert scenario.sim.decode_router == "tetriinfer" and scenario.sim.disaggregation
    assert build_cluster(scenario.sim).disagg is not None
    with pytest.raises(ConfigError, match=r"topology must be a str"):
        scenario_from_dict({"cluster": {"replicas": 3, "topology": 3}})
    with pytest.raises(ConfigError, match=r"num_prefill_replicas = 3 of 3"):
        scenario_from_dict({"cluster": {"replicas": 3, "topology": "tetriinfer",
                                        "num_prefill_replicas": 3}})


def pattern_workload(n: int = 40) -> list:
    """Heavy and light decodes alternating: round robin over two decode replicas would put
    every heavy on one of them."""
    return [heavy(i, at_s=i * 0.05) if i % 2 == 0 else light(i, at_s=i * 0.05)
            for i in range(n)]


def heavy_per_decode_replica(decode_router: str, **params) -> Counter:
    config = SimConfig(num_replicas=3, num_prefill_replicas=1, topology="tetriinfer",
                       decode_router=decode_router, decode_router_params=params,
                       record_steps=True)
    specs = pattern_workload()
    run = simulate(config, specs)
    assert sorted(r.request_id for r in run.records) == sorted(s.request_id for s in specs)
    assert all(len(r.token_times_s) == s.num_output_tokens
               for r, s in zip(sorted(run.records, key=lambda r: r.request_id),
                               sorted(specs, key=lambda s: s.request_id), strict=True))
    prefill_steps = [step for step in run.step_log if step[0] == 0]
    assert prefill_steps and max(step[3] for step in prefill_steps) <= TETRIINFER_CHUNK_TOKENS
    assert run.topology_stats["pd_handoffs"] == len(specs)
    return Counter(r.replica_id for r in run.records if r.request_id.startswith("h"))


def test_simulated_run_spreads_heavy_decodes_over_the_decode_pool():
    spread = heavy_per_decode_replica("tetriinfer", predictor="oracle", num_choices=0)
    assert set(spread) == {1, 2} and abs(spread[1] - spread[2]) <= 2
    piled = heavy_per_decode_replica("round_robin")  # the control: the test can fail
    assert sorted(piled.values()) == [20]
