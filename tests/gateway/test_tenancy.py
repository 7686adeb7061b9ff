"""Tenancy under attack (issue 16, finding 8): /metrics behind a key when tenants are
configured, a tenant without keys refused at start-up, per-tenant concurrency caps over HTTP."""

import asyncio

import pytest
from tests.gateway.factories import MODEL, asgi_client, make_app, run

from shunter.errors import ConfigError
from shunter.gateway.config import load_config
from shunter.gateway.tenant import TenantConfig

TENANTS = (TenantConfig(name="acme", api_keys=("k-acme",)),
           TenantConfig(name="globex", api_keys=("k-globex",)))


def get_metrics(app, headers=None):
    async def go():
        async with asgi_client(app) as c:
            return await c.get("/metrics", headers=headers or {})
    return run(go())


def test_metrics_are_closed_with_tenants_and_no_metrics_key():
    app, _ = make_app(tenants=TENANTS)
    r = get_metrics(app)
    assert r.status_code == 403 and r.json()["error"]["code"] == "metrics_key_required"
    assert "acme" not in r.text
    # a tenant's own key does not open them either: they name every tenant
    assert get_metrics(app, {"authorization": "Bearer k-acme"}).status_code == 403


def test_metrics_key_opens_metrics_and_nothing_else_does():
    app, _ = make_app(tenants=TENANTS, metrics_key="scrape-me")
    assert get_metrics(app).status_code == 401
    assert get_metrics(app, {"authorization": "Bearer k-acme"}).status_code == 401
    ok = get_metrics(app, {"authorization": "Bearer scrape-me"})
    assert ok.status_code == 200 and "shunter_" in ok.text


def test_an_open_gateway_keeps_open_metrics():
    app, _ = make_app()
    assert get_metrics(app).status_code == 200


@pytest.mark.parametrize("body", [
    '[[tenants]]\nname = "acme"\n',
    '[[tenants]]\nname = "acme"\napi_keys = ["k"]\n[[tenants]]\nname = "b"\napi_keys = ["k"]\n',
])
def test_a_config_with_a_keyless_or_key_sharing_tenant_is_refused(tmp_path, body):
    path = tmp_path / "gw.toml"
    path.write_text('[[backends]]\nname = "a"\nkind = "fake"\n' + body)
    with pytest.raises(ConfigError, match=r"\[\[tenants\]\]"):
        load_config(path)


def test_a_tenant_over_its_concurrency_cap_gets_a_429_others_do_not():
    tenants = (TenantConfig(name="acme", api_keys=("k-acme",), max_concurrent_requests=2),
               TenantConfig(name="globex", api_keys=("k-globex",)))
    app, fakes = make_app(tenants=tenants)
    for fake in fakes:
        fake.first_token_delay_s = 0.3

    async def go():
        async with asgi_client(app) as c:
            def ask(key):
                return c.post("/v1/completions", headers={"authorization": f"Bearer {key}"},
                              json={"model": MODEL, "prompt": "x", "max_tokens": 2})
            return await asyncio.gather(*(ask("k-acme") for _ in range(5)),
                                        *(ask("k-globex") for _ in range(5)))
    answers = run(go())
    acme = sorted(r.status_code for r in answers[:5])
    assert acme == [200, 200, 429, 429, 429]
    assert answers[2].json()["error"]["code"] == "concurrency_limit_exceeded" or \
        any(r.json().get("error", {}).get("code") == "concurrency_limit_exceeded"
            for r in answers[:5])
    assert all(r.status_code == 200 for r in answers[5:])
