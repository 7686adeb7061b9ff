"""Bad input gets a clear 4xx in OpenAI's error shape, and never reaches a backend."""

import pytest
from tests.gateway.factories import MODEL, asgi_client, make_app, run

from shunter.gateway.tenant import TenantConfig

CHAT = [{"role": "user", "content": "hi"}]


def post(app, path, **kwargs):
    async def go():
        async with asgi_client(app) as c:
            return await c.post(path, **kwargs)
    return run(go())


def assert_error(r, status, *, param=None, code=None, kind=None):
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    if kind is not None:
        assert error["type"] == kind


@pytest.mark.parametrize("content", [b"{bad", b"", b"\xff\xfe", b"[1, 2"])
def test_malformed_json_is_400(content):
    app, fakes = make_app()
    r = post(app, "/v1/completions", content=content)
    assert_error(r, 400, code="invalid_json", kind="invalid_request_error")
    assert sum(f.num_submitted for f in fakes) == 0


@pytest.mark.parametrize(("body", "param"), [
    ({"model": MODEL, "prompt": "x", "max_tokens": "10"}, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "temperature": True}, "temperature"),
    ({"model": MODEL, "prompt": "x", "temperature": 3}, "temperature"),
    ({"model": MODEL, "prompt": "x", "top_p": 0}, "top_p"),
    ({"model": MODEL, "prompt": "x", "n": 0}, "n"),
    ({"model": MODEL, "prompt": "x", "n": 100000}, "n"),
    ({"model": MODEL, "prompt": "x", "seed": 1 << 70}, "seed"),
    ({"model": MODEL, "prompt": "x", "logit_bias": {"a": 1}}, "logit_bias"),
    ({"model": MODEL, "prompt": "x", "logprobs": 50}, "logprobs"),
    ({"model": MODEL, "prompt": "x", "presence_penalty": 3}, "presence_penalty"),
    ({"model": MODEL, "prompt": [[1, -2]]}, "prompt"),
    ({"model": MODEL, "prompt": "x", "stream": "yes"}, "stream"),
    ({"model": MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": MODEL, "prompt": "x", "stop": 5}, "stop"),
    ({"model": MODEL, "prompt": "x", "seed": "1"}, "seed"),
    ({"model": MODEL, "prompt": "x", "priority": "high"}, "priority"),
    ({"model": MODEL, "prompt": "x", "ignore_eos": 1}, "ignore_eos"),
    ({"model": MODEL, "prompt": 5}, "prompt"),
    ({"model": MODEL, "prompt": ""}, "prompt"),
    ({"model": MODEL}, "prompt"),
    ({"prompt": "x"}, "model"),
    ({"model": 7, "prompt": "x"}, "model"),
    ({"model": MODEL, "prompt": "x", "stream_options": {"include_usage": "y"}},
     "stream_options.include_usage"),
    ({"model": MODEL, "prompt": "x", "program_id": 7}, "program_id"),
    ({"model": MODEL, "prompt": "x", "program_id": ["p"]}, "program_id"),
    ({"model": MODEL, "prompt": "x", "program_id": " "}, "program_id"),
    ({"model": MODEL, "prompt": "x", "session_id": 7}, "session_id"),
])
def test_wrong_types_and_ranges_name_the_field(body, param):
    app, fakes = make_app()
    assert_error(post(app, "/v1/completions", json=body), 400, param=param)
    assert sum(f.num_submitted for f in fakes) == 0


@pytest.mark.parametrize(("messages", "param"), [
    ("hi", "messages"), ([], "messages"), ([{"role": "wizard", "content": "x"}], "messages[0].role"),
    ([{"role": {"a": 1}, "content": "x"}], "messages[0].role"),
    ([{"role": ["user"], "content": "x"}], "messages[0].role"),
    ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
    ([{"role": "user", "content": 5}], "messages[0].content"), (["hi"], "messages[0].role"),
])
def test_bad_chat_messages(messages, param):
    app, _ = make_app()
    r = post(app, "/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert_error(r, 400, param=param)


@pytest.mark.parametrize(("path", "raw", "param"), [
    ("/v1/completions", b'{"model": "%s", "prompt": "x\\ud800"}', "prompt"),
    ("/v1/chat/completions",
     b'{"model": "%s", "messages": [{"role": "user", "content": "a\\udfff"}]}',
     "messages[0].content"),
    ("/v1/completions", b'{"model": "%s", "prompt": "x", "stop": ["\\ud800"]}', "stop[0]"),
])
def test_a_lone_surrogate_is_a_400_naming_where_it_is(path, raw, param):
    app, fakes = make_app()
    r = post(app, path, content=raw % MODEL.encode(),
             headers={"content-type": "application/json"})
    assert_error(r, 400, param=param)
    assert sum(f.num_submitted for f in fakes) == 0


def test_json_nested_a_hundred_thousand_deep_is_a_400():
    app, _ = make_app()
    deep = b"[" * 100_000 + b"]" * 100_000
    r = post(app, "/v1/completions", content=deep, headers={"content-type": "application/json"})
    assert_error(r, 400, code="invalid_json")
    # a surrogate escape deep inside makes the gateway walk the body: bounded, still a 400
    nested = b'{"model": "%s", "prompt": "x", "metadata": ' % MODEL.encode() \
        + b'{"a": ' * 200 + b'"\\ud800"' + b"}" * 200 + b"}"
    assert_error(post(app, "/v1/completions", content=nested), 400, code="invalid_json")


def test_body_that_is_not_an_object_is_400():
    app, _ = make_app()
    assert_error(post(app, "/v1/completions", json=[1, 2]), 400)


def test_huge_body_is_413_and_huge_prompt_is_400():
    app, fakes = make_app(max_body_bytes=10_000, max_prompt_chars=1_000)
    r = post(app, "/v1/completions", json={"model": MODEL, "prompt": "x" * 20_000})
    assert_error(r, 413, code="payload_too_large")
    r = post(app, "/v1/completions", json={"model": MODEL, "prompt": "x" * 2_000})
    assert_error(r, 400, param="prompt", code="context_length_exceeded")
    r = post(app, "/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "user", "content": "y" * 600}, {"role": "user", "content": "y" * 600}]})
    assert_error(r, 400, param="messages", code="context_length_exceeded")
    assert sum(f.num_submitted for f in fakes) == 0


def test_unknown_model_is_404_model_not_found():
    app, _ = make_app()
    r = post(app, "/v1/chat/completions", json={"model": "gpt-9", "messages": CHAT})
    assert_error(r, 404, param="model", code="model_not_found", kind="not_found_error")
    assert MODEL in r.json()["error"]["message"]


def test_missing_and_bad_keys_are_401_good_key_is_200():
    app, _ = make_app(tenants=(TenantConfig(name="acme", api_keys=("sk-acme",)),))
    body = {"model": MODEL, "messages": CHAT}
    assert_error(post(app, "/v1/chat/completions", json=body), 401, code="invalid_api_key",
                 kind="authentication_error")
    r = post(app, "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-nope"})
    assert_error(r, 401, code="invalid_api_key")
    r = post(app, "/v1/chat/completions", json=body, headers={"authorization": "Basic sk-acme"})
    assert_error(r, 401)
    r = post(app, "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-acme"})
    assert r.status_code == 200


def test_wrong_method_is_405_and_unknown_path_is_404():
    app, _ = make_app()

    async def go():
        async with asgi_client(app) as c:
            return (await c.get("/v1/completions"), await c.post("/health"),
                    await c.get("/v2/nothing"), await c.delete("/v1/models"))
    get_completions, post_health, unknown, delete_models = run(go())
    assert_error(get_completions, 405)
    assert_error(post_health, 405)
    assert_error(unknown, 404)
    assert_error(delete_models, 405)
