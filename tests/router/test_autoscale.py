"""The autoscaling decision (`shunter.router.autoscale`): its config's checks and each rule."""

import math

import pytest

from shunter.errors import ConfigError
from shunter.router.autoscale import (
    AutoscaleConfig,
    Autoscaler,
    ScaleDecision,
    pooled_load,
    replica_load,
)
from shunter.router.interface import ReplicaView

TOTAL = 1000  # KV blocks per replica


def view(replica_id: int, *, used: int = 0, waiting_blocks: int = 0, num_running: int = 0,
         num_waiting: int = 0) -> ReplicaView:
    return ReplicaView(replica_id=replica_id, num_running=num_running, num_waiting=num_waiting,
                       num_waiting_tokens=waiting_blocks * 16, num_free_blocks=TOTAL - used,
                       num_total_blocks=TOTAL, block_size=16)


def scaler(**kwargs: object) -> Autoscaler:
    settings = {"min_replicas": 1, "max_replicas": 8, "scale_up_cooldown_s": 0.0,
                "scale_down_cooldown_s": 0.0, **kwargs}
    return Autoscaler(AutoscaleConfig(**settings))  # type: ignore[arg-type]


# ---- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("table", "message"), [
    ({"min_replicas": 3, "max_replicas": 2}, r"max_replicas \(2\) must be >= min_replicas \(3\)"),
    ({"max_replicas": 0}, "max_replicas must be >= 1"),
    ({"min_replicas": 0}, "min_replicas must be >= 1"),
    ({"scale_up_load": 0.5, "scale_down_load": 0.5}, r"scale_down_load \(0.5\) must be below"),
    ({"scale_up_load": 0.5, "scale_down_load": 0.7}, r"scale_down_load \(0.7\) must be below"),
    ({"scale_down_load": 0.9}, r"scale_down_load \(0.9\) must be below scale_up_load \(0.8\)"),
    ({"metric": "freeness", "scale_down_load": -5.0}, r"must be below scale_up_load \(-10.0\)"),
    ({"scale_up_load": 0.0, "scale_down_load": -1.0}, "scale_up_load must be > 0 for metric"),
    ({"provision_s": -1.0}, "provision_s must be >= 0"),
    ({"scale_up_cooldown_s": -0.5}, "scale_up_cooldown_s must be >= 0"),
    ({"scale_down_cooldown_s": -0.5}, "scale_down_cooldown_s must be >= 0"),
    ({"interval_s": 0.0}, "interval_s must be > 0"),
    ({"interval_s": math.nan}, "interval_s must be > 0"),
    ({"provision_s": math.inf}, "provision_s must be >= 0"),
    ({"metric": "gpu_util"}, "metric must be one of kv_demand, freeness"),
    ({"drain": "kill"}, "drain must be one of migrate, wait"),
    ({"max_replicas": 2.0}, "max_replicas must be a whole number"),
    ({"min_replicas": True}, "min_replicas must be a whole number"),
    ({"provision_s": "10"}, "provision_s must be a number"),
    ({"provision_s": False}, "provision_s must be a number"),
    ({"drain": 1}, "drain must be a string"),
    ({"max_replica": 4}, "unknown key 'max_replica'; valid: drain, interval_s, max_replicas"),
])
def test_every_bad_table_is_a_config_error_naming_where_and_the_key(table, message):
    with pytest.raises(ConfigError, match=message) as info:
        AutoscaleConfig.from_table(table, "scenario.toml [autoscale]")
    assert str(info.value).startswith("scenario.toml [autoscale]: ")


def test_a_good_table_fills_the_metrics_defaults():
    config = AutoscaleConfig.from_table({"max_replicas": 4, "provision_s": 0}, "x")
    assert config.max_replicas == 4 and config.provision_s == 0 and config.loads == (0.8, 0.4)
    llumnix = AutoscaleConfig.from_table({"metric": "freeness"}, "x")
    assert llumnix.loads == (-10.0, -60.0)  # Llumnix's SCALE_UP/DOWN_THRESHOLD
    assert AutoscaleConfig().drain == "migrate" and AutoscaleConfig().min_replicas == 1


# ---- the load -------------------------------------------------------------------------------

def test_loads_pool_the_replicas_as_one_instance():
    views = [view(0, used=600, waiting_blocks=200, num_running=10, num_waiting=2),
             view(1, used=200, num_running=10)]
    # kv_demand: (800 used + 200 queued) / 2000 blocks; one empty replica more: / 3000
    assert pooled_load("kv_demand", views) == pytest.approx(0.5)
    assert pooled_load("kv_demand", views, num_empty=2) == pytest.approx(0.25)
    # freeness: -(1200 free - 200 queued) / 22 requests
    assert pooled_load("freeness", views) == pytest.approx(-1000 / 22)
    assert replica_load("freeness", view(3)) == -math.inf  # idle: infinitely free
    assert replica_load("kv_demand", views[1]) == pytest.approx(0.2)


# ---- decisions ------------------------------------------------------------------------------

def test_scale_up_adds_the_fewest_replicas_that_bring_the_load_under_the_threshold():
    a = scaler()  # kv_demand, up above 0.8
    views = [view(0, used=900, waiting_blocks=900), view(1, used=900, waiting_blocks=900)]
    # demand 3600 blocks: 0.8 needs 4500, i.e. 4.5 replicas -> 3 more
    assert a.decide(10.0, views, num_starting=0) == ScaleDecision(num_add=3)


def test_starting_replicas_count_as_empty_capacity_and_toward_the_maximum():
    views = [view(0, used=900, waiting_blocks=900), view(1, used=900, waiting_blocks=900)]
    assert scaler().decide(10.0, views, num_starting=3) == ScaleDecision()  # 3600/5000 < 0.8
    assert scaler().decide(10.0, views, num_starting=1) == ScaleDecision(num_add=2)
    # the maximum (here 4) counts starting replicas too
    assert scaler(max_replicas=4).decide(10.0, views, num_starting=1) == ScaleDecision(num_add=1)
    assert scaler(max_replicas=4).decide(10.0, views, num_starting=2) == ScaleDecision()


def test_no_scale_up_at_the_maximum_and_none_below_the_threshold():
    hot = [view(0, used=1000, waiting_blocks=500)]
    assert scaler(max_replicas=1).decide(0.0, hot, 0) == ScaleDecision()
    assert scaler().decide(0.0, [view(0, used=790)], 0) == ScaleDecision()


def test_scale_down_drains_the_least_loaded_when_the_others_could_carry_it_all():
    a = scaler()
    views = [view(0, used=300, num_running=5), view(1, used=100, num_running=2),
             view(2, used=150, num_running=3)]
    # 550 used blocks over the two others' 2000: 0.275 < 0.4 -> drain replica 1
    assert a.decide(0.0, views, 0) == ScaleDecision(drain_ids=(1,))


def test_no_drain_when_the_others_would_be_too_loaded_or_at_the_minimum():
    views = [view(0, used=500), view(1, used=400)]  # 900 / 1000 >= 0.4
    assert scaler().decide(0.0, views, 0) == ScaleDecision()
    idle = [view(0), view(1)]
    assert scaler(min_replicas=2).decide(0.0, idle, 0) == ScaleDecision()
    assert scaler().decide(0.0, idle, 0) == ScaleDecision(drain_ids=(1,))  # ties: newest id


def test_no_drain_while_a_replica_starts():
    assert scaler().decide(0.0, [view(0), view(1)], num_starting=1) == ScaleDecision()


def test_below_the_minimum_adds_up_to_it_whatever_the_cooldown():
    a = scaler(min_replicas=3, scale_up_cooldown_s=100.0)
    assert a.decide(0.0, [view(0)], num_starting=0) == ScaleDecision(num_add=2)
    assert a.decide(1.0, [view(0)], num_starting=1) == ScaleDecision(num_add=1)


def test_above_the_maximum_drains_the_least_loaded_down_to_it():
    views = [view(0, used=500), view(1, used=100), view(2, used=50), view(3, used=900)]
    assert scaler(max_replicas=2).decide(0.0, views, 0) == ScaleDecision(drain_ids=(2, 1))


def test_cooldowns_run_from_the_last_action():
    a = scaler(scale_up_cooldown_s=30.0, scale_down_cooldown_s=60.0)
    hot = [view(0, used=1000, waiting_blocks=1000)]
    assert a.decide(0.0, hot, 0).num_add == 2
    assert a.decide(10.0, [*hot, view(1, used=1000), view(2, used=1000)], 0).is_empty  # cooling
    assert a.decide(30.0, [*hot, view(1, used=1000), view(2, used=1000)], 0).num_add >= 1
    idle = [view(0), view(1), view(2)]
    assert a.decide(60.0, idle, 0).is_empty  # 30 s after the last scale-up: down must wait
    assert a.decide(90.0, idle, 0) == ScaleDecision(drain_ids=(2,))
    assert a.decide(100.0, idle[:2], 0).is_empty
    assert a.decide(150.0, idle[:2], 0) == ScaleDecision(drain_ids=(1,))


def test_llumnix_freeness_metric_scales_on_free_blocks_per_request():
    a = scaler(metric="freeness")  # up when freeness < 10, down when the others' > 60
    busy = [view(0, used=950, num_running=10)]  # 50 free / 10 requests = 5 per request
    # 1 more replica: 1050 / 10 = 105 >= 10
    assert a.decide(0.0, busy, 0) == ScaleDecision(num_add=1)
    calm = [view(0, used=100, num_running=10), view(1, used=100, num_running=5)]
    # without replica 1: (1800 - 1000) free / 15 requests = 53 < 60: keep both
    assert a.decide(0.0, calm, 0).is_empty
    light = [view(0, used=100, num_running=4), view(1, used=100, num_running=5)]
    assert a.decide(0.0, light, 0) == ScaleDecision(drain_ids=(0,))  # 800 / 9 = 89 > 60


def test_decisions_are_deterministic():
    views = [view(i, used=100 * i, num_running=i) for i in range(5)]
    runs = [[scaler().decide(t, views, 0) for t in (0.0, 1.0, 2.0)] for _ in range(2)]
    assert runs[0] == runs[1]


def test_concurrency_metric_scales_on_requests_per_replica():
    s = scaler(metric="concurrency", scale_up_load=4.0, scale_down_load=2.0)
    assert pooled_load("concurrency", [view(0, num_running=6), view(1, num_waiting=4)]) == 5.0
    assert pooled_load("concurrency", [view(0, num_running=6)], num_empty=2) == 2.0
    # 10 requests on 2 replicas: 5 each > 4; one more brings it to 3.33
    assert s.decide(0.0, [view(0, num_running=6), view(1, num_running=4)], 0) \
        == ScaleDecision(num_add=1)
    # 5 requests on 3: without the least loaded, 2.5 each: not below 2
    busy = [view(0, num_running=3), view(1, num_running=1), view(2, num_running=1)]
    assert s.decide(1.0, busy, 0) == ScaleDecision()
    quiet = [view(0, num_running=2), view(1, num_running=1), view(2, num_running=0)]
    assert s.decide(2.0, quiet, 0) == ScaleDecision(drain_ids=(2,))  # 3 on 2: 1.5 < 2
    with pytest.raises(ConfigError, match="scale_up_load must be > 0 for metric concurrency"):
        AutoscaleConfig(metric="concurrency", scale_up_load=0.0, scale_down_load=-1.0)
