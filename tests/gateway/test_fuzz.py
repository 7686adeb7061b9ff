"""A schema-based fuzz run: schemathesis reads the gateway's own /openapi.json and sends what
it generates from it, valid and invalid, to every operation of an app over fake backends
(in-process, no network). No input may be a 5xx, and every answer must be what the document
says: a documented status, content type and headers, a body matching its schema, valid data
accepted and invalid data refused. Seeded and derandomized: the same cases on every run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.config import SchemathesisConfig  # noqa: E402
from tests.gateway.factories import MODEL, ManualClock, asgi_client, make_app, run  # noqa: E402

from shunter.backend.protocol import GenerateChunk, GenerateRequest  # noqa: E402
from shunter.gateway import app as gateway_app  # noqa: E402
from shunter.gateway import schemas  # noqa: E402
from shunter.gateway.app import GatewayApp  # noqa: E402
from shunter.gateway.fake import FakeEngineClient, FakeModel  # noqa: E402
from shunter.gateway.http import Receive, Scope, Send  # noqa: E402
from shunter.gateway.openapi import openapi_spec  # noqa: E402
from shunter.gateway.tenant import TenantConfig  # noqa: E402

__all__ = ["BoundedFakeModel", "FreshGateway", "TokenIdFake"]

MAX_EXAMPLES = 50  # per operation and phase: the whole run takes ~20 s on 2 cores
MAX_FAKE_TOKENS = 8
MAX_STREAM_EVENTS = 10_000  # every event of the longest stream: n = 128 choices, each in full
KEY = "sk-fuzz"
MAX_REQUESTS_PER_MIN = 60
GENERATE_PATHS = ("/v1/completions", "/v1/chat/completions")


@dataclass(frozen=True, slots=True)
class BoundedFakeModel(FakeModel):
    """The fake model, stopping at a few tokens whatever `max_tokens` and `ignore_eos` ask
    (a real engine stops at its context length; the fake would go on forever)."""

    def generate(self, request: GenerateRequest) -> tuple[list[str], str]:
        limit = min(request.max_tokens or MAX_FAKE_TOKENS, MAX_FAKE_TOKENS)
        return FakeModel.generate(self, replace(request, max_tokens=limit))


class TokenIdFake(FakeEngineClient):
    """The fake backend, reading a prompt of token ids as the text of its ids (the fake model
    conditions on text only)."""

    def submit(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        if isinstance(request.prompt, tuple):
            request = replace(request, prompt=" ".join(map(str, request.prompt)))
        return super().submit(request)


def fuzzed_app(**app_fields: Any) -> GatewayApp:
    app, _ = make_app(**app_fields)
    for replica in app.pool.replicas:
        replica.client = TokenIdFake(model=BoundedFakeModel())
    return app


class FreshGateway:
    """The gateway, built afresh at each lifespan startup: schemathesis starts one per test
    and ends it (which drains the gateway for good) after it."""

    def __init__(self, **app_fields: Any) -> None:
        self.app_fields = app_fields
        self.app = fuzzed_app(**app_fields)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.app = fuzzed_app(**self.app_fields)
        await self.app(scope, receive, send)


def config(**extra: Any) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "seed": 0, "suppress-health-check": ["all"], "max-stream-events": MAX_STREAM_EVENTS,
        "generation": {"deterministic": True, "database": "none", "max-examples": MAX_EXAMPLES},
        **extra})


OPEN = schemathesis.openapi.from_asgi("/openapi.json", FreshGateway(), config=config())
# rate limits on a clock that stands still: the first requests of each operation pass, the
# rest are 429s, the same ones on every run
LIMITED = TenantConfig(name="t", api_keys=(KEY,), max_requests_per_min=MAX_REQUESTS_PER_MIN)
KEYED = schemathesis.openapi.from_asgi(
    "/openapi.json",
    FreshGateway(tenants=(LIMITED,), cors_origins=("*",), clock=ManualClock()),
    # an OPTIONS without Origin is no CORS preflight, so the path does not take it: a 405
    config=config(auth={"openapi": {"bearer": {"bearer": KEY}}}, operations=[{
        "include-method": "OPTIONS",
        "checks": {"missing_required_header": {"expected-statuses": [405]}}}]))


def call_and_validate(case: schemathesis.Case) -> None:
    """The case as generated; a valid generation body also streamed (SSE events checked one
    by one against the chunk schema), as few generated bodies ask for a stream."""
    case.call_and_validate()
    is_valid = case.meta is not None and case.meta.generation.mode.is_positive
    if is_valid and case.operation.path in GENERATE_PATHS and isinstance(case.body, dict):
        case.body = {**case.body, "stream": True}
        response = case.call_and_validate()
        if response.status_code == 200:
            assert response.headers["content-type"][0].startswith("text/event-stream")
            assert response.text.endswith("data: [DONE]\n\n")


@pytest.mark.slow
@OPEN.parametrize()
def test_an_open_gateway_answers_every_input_as_documented(case: schemathesis.Case) -> None:
    call_and_validate(case)


@pytest.mark.slow
@KEYED.parametrize()
def test_a_gateway_with_keys_and_cors_answers_every_input_as_documented(
        case: schemathesis.Case) -> None:
    call_and_validate(case)


def test_the_spec_documents_every_route_and_auth_cors_and_models_only_when_they_apply() -> None:
    served = {*gateway_app._GENERATE_ROUTES, *gateway_app._FORWARD_ROUTES,
              *gateway_app._GET_ROUTES, "/v1/models/{model}"}
    plain = openapi_spec(has_keys=False)
    assert set(plain["paths"]) == served
    assert "security" not in plain and "securitySchemes" not in plain["components"]
    assert not any("options" in item or "401" in str(item) for item in plain["paths"].values())
    assert "enum" not in plain["components"]["schemas"]["ModelName"]
    full = openapi_spec(has_keys=True, has_cors=True, models=(MODEL,))
    assert full["security"] == [{"bearer": []}]
    assert full["paths"]["/health"]["get"]["security"] == []  # public: no key asked
    assert "401" in full["paths"]["/v1/completions"]["post"]["responses"]
    assert all("options" in item for item in full["paths"].values())
    assert full["components"]["schemas"]["ModelName"]["enum"] == [MODEL]


def post(app: GatewayApp, path: str, body: dict[str, Any]) -> Any:
    async def go() -> Any:
        async with asgi_client(app) as client:
            return await client.post(path, json=body)
    return run(go())


CHAT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("path", "body", "param"), [
    # a prompt of token ids crashed the gateway's size estimate (500)
    ("/v1/completions", {"prompt": [[1, 2], "three", [4]], "max_tokens": 2}, None),
    # JSON Schema's integers: 2.0 is one (and pydantic, so vLLM, reads it as 2)
    ("/v1/completions", {"prompt": [1.0, 2.0], "max_tokens": 2.0, "n": 1.0, "seed": 7.0}, None),
    # an int too big for a float crashed a number's range check (500)
    ("/v1/completions", {"prompt": "x", "temperature": 10**400}, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": -10**400}, "top_p"),
    # logit_bias keys are token ids in ASCII digits, as documented: int() also reads these
    ("/v1/completions", {"prompt": "x", "logit_bias": {"+1": 1}}, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {" 1": 1}}, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"1" * 5000: 1}}, "logit_bias"),
    # a max_tokens no model has: reserved from a tenant's token bucket, it broke the bucket
    ("/v1/completions", {"prompt": "x", "max_tokens": 10**400}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 1e300}, "max_tokens"),
    # max_tokens was not checked when max_completion_tokens was sent
    ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": 3, "max_tokens": "x"},
     "max_tokens"),
])
def test_inputs_that_crashed_or_slipped_through(path: str, body: dict[str, Any],
                                                param: str | None) -> None:
    app = fuzzed_app()
    response = post(app, path, {"model": MODEL, **body})
    if param is None:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_the_largest_max_tokens_leaves_a_tenants_token_bucket_whole() -> None:
    app = fuzzed_app(tenants=(TenantConfig(name="t", api_keys=(KEY,), max_tokens_per_min=1000),),
                     clock=ManualClock())

    async def go() -> list[Any]:
        async with asgi_client(app) as client:
            return [await client.post("/v1/completions", headers={"authorization": f"Bearer {KEY}"},
                                      json={"model": MODEL, "prompt": "x", "max_tokens": n})
                    for n in (schemas.MAX_OUTPUT_TOKENS, 2)]
    largest, small = run(go())
    assert largest.status_code == 200 and small.status_code == 200, small.text
    assert int(small.headers["x-ratelimit-remaining-tokens"]) > 900


def test_a_backends_own_429_says_when_to_retry() -> None:
    app, fakes = make_app(num_backends=1)
    fakes[0].is_failing, fakes[0].fail_status = True, 429
    response = post(app, "/v1/completions", {"model": MODEL, "prompt": "x"})
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
