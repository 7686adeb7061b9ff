"""The gateway's scheduling settings: the [scheduler] table and serve flags, the gateway
tier's policy, predictions made at the gateway and passed to backends, program ids."""

import argparse
from dataclasses import replace

import pytest
from tests.gateway.factories import MODEL, asgi_client, make_app, run

from shunter.backend.protocol import GenerateRequest
from shunter.core.predict.learned import LearnedPredictor
from shunter.errors import ConfigError
from shunter.gateway.config import load_config
from shunter.gateway.factory import GatewayParts, gateway_policy
from shunter.gateway.fake import FakeEngineClient
from shunter.gateway.settings import SchedulerSettings
from shunter.gateway.tenant import TenantConfig


class RecordingFake(FakeEngineClient):
    """A fake backend that keeps every request it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[GenerateRequest] = []

    def submit(self, request):
        self.seen.append(request)
        return super().submit(request)


def test_scheduler_table_is_read_and_checked_naming_file_and_table(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[scheduler]\npolicy = "sjf"\nparams = { aging_tokens_per_s = 5.0 }\n'
                    'predictor = "learned"\npredictor_params = { kind = "rank" }\n')
    settings = load_config(path).scheduler
    assert settings.engine_policy == ("sjf", {"aging_tokens_per_s": 5.0})
    assert settings.gateway_tier(has_engines=False) == ("sjf", {"aging_tokens_per_s": 5.0})
    for body, words in [
        ('policy = "fifo"', ["[scheduler]", "fifo", "valid:", "fcfs", "vtc"]),
        ('policy = "vtc"\nparams = { quantum = 3 }', ["[scheduler]", "quantum", "valid:"]),
        ('policy = 5', ["[scheduler]", "policy"]),
        ('params = { aging_s = 1.0 }', ["[scheduler]", "no policy"]),
        ('predictor = "psychic"', ["[scheduler]", "psychic", "learned"]),
        ('predictor = "oracle"', ["[scheduler]", "only the simulator"]),
        ('policy = "vtc"\npredictor = "learned"', ["[scheduler]", "read only by", "ltr, sjf"]),
        ('gateway_policy = "mlfq"', ["[scheduler]", "mlfq", "cannot order the gateway"]),
        ('polcy = "vtc"', ["[scheduler]", "polcy", "valid:"]),
    ]:
        path.write_text(f"[scheduler]\n{body}\n")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert all(w in str(info.value) for w in [str(path), *words]), str(info.value)


def test_policy_tiers_default_pass_through_and_refusal():
    assert SchedulerSettings().engine_policy == ("fcfs", {})
    assert SchedulerSettings().gateway_tier(has_engines=True) == ("vtc", {})
    mlfq = SchedulerSettings(policy="mlfq")
    assert mlfq.engine_policy == ("mlfq", {})
    assert mlfq.gateway_tier(has_engines=True) == ("fcfs", {})  # the engines do mlfq's work
    with pytest.raises(ValueError, match="no in-process engine") as info:
        mlfq.gateway_tier(has_engines=False)
    assert "--policy" in str(info.value) and "kind = \"engine\"" in str(info.value)
    split = SchedulerSettings(policy="mlfq", gateway_policy="vtc")
    assert split.gateway_tier(has_engines=False) == ("vtc", {})


def test_serve_flags_override_the_table_and_bad_flags_are_clear_errors():
    from shunter.cli.serving import _scheduler_from_args
    base = SchedulerSettings(policy="vtc", params={"input_weight": 2.0})
    args = argparse.Namespace(policy="sjf", policy_params=None, predictor=None,
                              predictor_params=None)
    assert _scheduler_from_args(base, args).engine_policy == ("sjf", {})
    args = replace_ns(args, policy=None, policy_params={"output_weight": 3.0})
    assert _scheduler_from_args(base, args).params == {"output_weight": 3.0}
    with pytest.raises(ConfigError, match="--policy") as info:
        _scheduler_from_args(base, replace_ns(args, policy="nope"))
    assert "valid:" in str(info.value)


def replace_ns(ns, **changes):
    return argparse.Namespace(**{**vars(ns), **changes})


def test_tenant_weights_need_a_weighted_gateway_policy():
    tenants = (TenantConfig(name="gold", weight=3.0), TenantConfig(name="free"))
    policy = gateway_policy(GatewayParts(app=None, policy="vtc", tenants=tenants))
    assert policy.tenant_weights == {"gold": 3.0}
    with pytest.raises(ValueError, match="weights"):
        gateway_policy(GatewayParts(app=None, policy="fcfs", tenants=tenants))


def test_program_id_from_body_or_header_and_prediction_reach_the_backend():
    app, _ = make_app(num_backends=1)
    fake = RecordingFake()
    app.pool.replicas[0].client = fake
    app.predictor = LearnedPredictor(weights={"bias": 1.0})  # log1p(tokens) = 1: e - 1 tokens

    async def go():
        async with asgi_client(app) as c:
            body = {"model": MODEL, "prompt": "hello there", "max_tokens": 2}
            a = await c.post("/v1/completions", json={**body, "program_id": "agent-1"})
            b = await c.post("/v1/completions", json=body,
                             headers={"x-program-id": "agent-2", "x-session-id": "s"})
            return a, b
    a, b = run(go())
    assert a.status_code == b.status_code == 200
    assert [r.program_id for r in fake.seen] == ["agent-1", "agent-2"]
    assert fake.seen[1].session_id == "s"
    assert all(r.predicted_output_tokens == pytest.approx(1.718, abs=1e-3) for r in fake.seen)


def test_every_gateway_policy_serves_requests_through_the_queue():
    from shunter.core.sched.registry import POLICIES, make_policy
    for name in sorted(n for n in POLICIES if make_policy(n).requires_engine is None):
        app, fakes = make_app(num_backends=2, max_concurrency=1)
        app.admission.queue = type(app.admission.queue)(gateway_policy(
            GatewayParts(app=None, policy=name)), lambda r: 0)

        async def go(app=app):
            async with asgi_client(app) as c:
                import asyncio
                return await asyncio.gather(*(c.post("/v1/completions", json={
                    "model": MODEL, "prompt": f"p {i}", "max_tokens": 3, "program_id": f"g{i % 2}"})
                    for i in range(8)))
        results = run(go())
        assert [r.status_code for r in results] == [200] * 8, name
        assert app.admission.num_queued == 0 and app.admission.num_active == 0


def test_unhonoured_predictor_settings_are_refused():
    with pytest.raises(ValueError, match="no predictor"):
        SchedulerSettings(predictor_params={"kind": "rank"})
    assert replace(SchedulerSettings(), policy="ltr").engine_policy == ("ltr", {})


def test_a_modelled_prediction_cost_is_refused_live():
    with pytest.raises(ValueError, match="predictor_params cheap_cost_s, expensive_cost_s: what "
                                         "a prediction costs is a simulator model"):
        SchedulerSettings(policy="skippredict", predictor="skip_learned",
                          predictor_params={"cheap_cost_s": 0.01, "expensive_cost_s": 0.1})
