"""Backend speeds in routing: a `profile` file gives a backend the speeds a simulated replica
with that profile has; without one the router weighs what the gateway measured; bad profile
settings fail at start-up."""

from __future__ import annotations

import asyncio

import pytest
from tests.gateway.factories import MODEL, asgi_client, make_app
from tests.gateway.virtual_time import run_virtual

from shunter.core.types import RequestSpec
from shunter.errors import ConfigError
from shunter.gateway.app import AppConfig
from shunter.gateway.config import BackendConfig, load_config
from shunter.gateway.factory import GatewayParts, build_app, build_backends
from shunter.gateway.speed import MIN_SAMPLES
from shunter.sim.config import SimConfig
from shunter.sim.cost.profile import StepProfile, save_profile
from shunter.sim.cost.speed import profile_speeds
from shunter.sim.runner import build_cluster


@pytest.fixture
def profile_path(tmp_path) -> str:
    path = tmp_path / "backend.json"
    save_profile(StepProfile(model="smollm2-135m", source="test", knots_tokens=(1, 64, 1024),
                             slopes_s_per_token=(1e-6, 2e-5, 6e-5), fixed_s=0.004,
                             s_per_prefill_chunk=3e-4, s_per_prefill_pair=2e-10,
                             s_per_decode_kv_token=3e-7, max_model_len=4096,
                             kv_bytes_per_token=9216, kv_capacity_tokens=65_536), path)
    return str(path)


def serving_loader():
    pytest.importorskip("torch")  # the composition root imports the engine
    from shunter.cli.serving import backend_speeds
    return backend_speeds


@pytest.mark.parametrize("budget", [None, 1024])
def test_a_profiled_backend_has_the_speeds_of_a_simulated_replica_with_that_profile(
        profile_path, budget):
    sim = build_cluster(SimConfig(
        model="smollm2-135m", cost_model="profile", gpu=profile_path, num_replicas=1,
        scheduler={"max_num_batched_tokens": budget} if budget else {})).replicas[0]
    backend = BackendConfig(name="b", kind="fake", profile=profile_path,
                            max_num_batched_tokens=budget)
    slots = build_backends((backend,), MODEL, load_speeds=serving_loader())
    replica = build_app(GatewayParts(app=AppConfig(model_names=(MODEL,))), slots).pool.replicas[0]
    replica.meter.add_prefill(1000, 5.0)  # measurements do not count when a profile is set
    for i in range(5):
        sim.add(RequestSpec(request_id=f"q{i}", arrival_s=0.0, num_prompt_tokens=300 + 700 * i,
                            num_output_tokens=50))
    views = []
    for _ in range(4):
        views.append(sim.view())
        sim.clock.advance_to(sim.start_step())
        sim.finish_step()
    assert views[-1].num_running and views[-1].num_running_tokens
    for expected in views:
        replica.num_running, replica.num_running_tokens = (expected.num_running,
                                                          expected.num_running_tokens)
        got = replica.view(0.0)
        assert (got.prefill_tokens_per_s, got.decode_step_s) == (
            expected.prefill_tokens_per_s, expected.decode_step_s)


def test_profile_settings_are_read_from_the_backends_table(tmp_path, profile_path):
    path = tmp_path / "gw.toml"
    path.write_text(f"[[backends]]\nname = 'v'\nurl = 'http://h:1'\nprofile = '{profile_path}'\n"
                    "max_num_batched_tokens = 2048\nblock_size = 32\n")
    backend = load_config(path).backends[0]
    assert (backend.profile, backend.max_num_batched_tokens) == (profile_path, 2048)
    slot = build_backends((backend,), MODEL, load_speeds=serving_loader())[0]
    expected = profile_speeds(profile_path, 2048)
    assert slot.speeds.prefill_tokens_per_s == expected.prefill_tokens_per_s
    replica = build_app(GatewayParts(app=AppConfig(model_names=(MODEL,))), [slot]).pool.replicas[0]
    assert replica.view(0.0).block_size == 32
    for bad in ("profile = ''", "max_num_batched_tokens = 0", "profile = 3"):
        path.write_text(f"[[backends]]\nname = 'v'\nurl = 'http://h:1'\n{bad}\n")
        with pytest.raises(ConfigError, match=bad.split()[0]):
            load_config(path)


@pytest.mark.parametrize("content", [None, "{not json", '{"format": "something-else"}',
                                     '{"format": "shunter-step-profile/1", "model": "m"}'])
def test_a_missing_or_malformed_profile_fails_naming_the_file_and_the_backend(tmp_path, content):
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    backends = (BackendConfig(name="fast-one", kind="fake", profile=str(path)),)
    with pytest.raises(ConfigError, match=r"backend fast-one: .*p\.json"):
        build_backends(backends, MODEL, load_speeds=serving_loader())


def test_a_profile_without_a_loader_is_a_config_error():
    backends = (BackendConfig(name="b", kind="fake", profile="x.json"),)
    with pytest.raises(ConfigError, match="backend b"):
        build_backends(backends, MODEL)


def test_the_cost_router_sends_requests_to_the_backend_measured_faster():
    done: dict[str, list[int]] = {}

    async def go() -> None:
        app, fakes = make_app(2, router="cost", clock=asyncio.get_running_loop().time)
        fakes[0].token_delay_s, fakes[1].token_delay_s = 0.05, 0.002  # r0 is the slow one
        for f in fakes:
            f.first_token_delay_s = 0.01
        pool = app.pool
        spec = RequestSpec(request_id="probe", arrival_s=0.0, num_prompt_tokens=20,
                           num_output_tokens=1)

        def costs() -> list[float]:
            views = [r.view(pool.clock()) for r in pool.replicas]
            return [c.total_s for c in pool.router.costs(spec, views)]

        async def post(client, i: int) -> None:
            r = await client.post("/v1/completions", json={
                "model": MODEL, "prompt": f"request {i} " * 8, "max_tokens": 16,
                "ignore_eos": True, "stream": True})
            assert r.status_code == 200

        async with asgi_client(app) as client:
            assert costs()[0] == costs()[1]  # nothing measured: the router's defaults
            for k in range(MIN_SAMPLES):  # in pairs: the second sees the first's load
                await asyncio.gather(post(client, 2 * k), post(client, 2 * k + 1))
            assert [f.num_submitted for f in fakes] == [MIN_SAMPLES, MIN_SAMPLES]
            views = [r.view(pool.clock()) for r in pool.replicas]
            assert views[0].decode_step_s == pytest.approx(0.05, rel=0.02)
            assert views[1].decode_step_s == pytest.approx(0.002, rel=0.02)
            assert costs()[0] > 5 * costs()[1]
            before = [f.num_submitted for f in fakes]
            for i in range(10):
                await post(client, 100 + i)
            done["after"] = [f.num_submitted - b for f, b in zip(fakes, before, strict=True)]

    run_virtual(go())
    assert done["after"] == [0, 10]
