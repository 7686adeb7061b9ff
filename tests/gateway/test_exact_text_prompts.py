"""Text and chat prompts on the exact prefix index: the gateway asks a backend's /tokenize for
their ids and routes to the replica whose published KV events hold their prefix."""

import asyncio
import logging
import zlib
from dataclasses import dataclass, field

import zmq
import zmq.asyncio
from tests.gateway.factories import asgi_client, run
from tests.gateway.test_kv_events import batch, stored

from shunter.backend.protocol import GenerateRequest
from shunter.gateway.app import AppConfig
from shunter.gateway.factory import BackendSlot, GatewayParts, build_app
from shunter.gateway.fake import FakeEngineClient
from shunter.gateway.pool import PoolConfig
from shunter.gateway.prompt_ids import tokenize_body

BS = 4
MODEL = "m"
TEXT = "the quick brown fox jumps over the lazy dog and then runs far away"  # 14 words
MESSAGES = [{"role": "system", "content": "you answer in one short line"},
            {"role": "user", "content": "where does the quick brown fox run"}]


def fake_ids(text):
    """The fake tokenizer's ids (`FakeEngineClient.request`): one per word."""
    return [zlib.crc32(w.encode()) % 50_000 for w in text.split()]


def chat_text(messages):
    return " ".join(f"<{m['role']}> {m['content']}" for m in messages) + " <assistant>"


@dataclass(slots=True, kw_only=True)
class TokenizingFake(FakeEngineClient):
    """The fake backend whose /tokenize also renders chat messages, and which records what
    it was asked and sent; `tokenize_status` other than 200 fails its /tokenize."""

    asked: list = field(default_factory=list)
    sent: list = field(default_factory=list)
    tokenize_status: int = 200
    tokenize_delay_s: float = 0.0

    def submit(self, request):
        self.sent.append(request)
        return FakeEngineClient.submit(self, request)

    async def request(self, path, body):
        self.asked.append(dict(body))
        if self.tokenize_delay_s:
            await asyncio.sleep(self.tokenize_delay_s)
        if self.tokenize_status != 200:
            return self.tokenize_status, b'{"error": {"message": "broken"}}'
        if "messages" in body:
            body = {"prompt": chat_text(body["messages"])}
        return await FakeEngineClient.request(self, path, body)


def make(num_backends=2, *, kv_events=None, **pool):
    fakes = [TokenizingFake() for _ in range(num_backends)]
    endpoints = kv_events or ["tcp://127.0.0.1:1"] * num_backends
    slots = [BackendSlot(name=f"r{i}", client=f, kv_events=e, block_size=BS)
             for i, (f, e) in enumerate(zip(fakes, endpoints, strict=True))]
    parts = GatewayParts(app=AppConfig(model_names=(MODEL,)), router="prefix_affinity",
                         pool=PoolConfig(**pool))
    return build_app(parts, slots), fakes


def holding(ids):
    """A batch storing the whole blocks of `ids` as one chain (engine hashes 1, 2, ...)."""
    num_blocks = len(ids) // BS
    return batch(stored(range(1, num_blocks + 1), None, ids[:num_blocks * BS]))


async def feed(app, held):
    """Replica i's history starts (seq 0) holding `held[i]` (None: nothing)."""
    for sub, ids in zip(app.pool.kv_events, held, strict=True):
        await sub.on_batch(0, batch() if ids is None else holding(ids))


async def post(app, path, body):
    async with asgi_client(app) as c:
        return await c.post(path, json=body)


def routed(app):
    return [int(app.metrics.routed.get((f"r{i}",))) for i in range(len(app.pool.replicas))]


def test_a_text_completion_goes_where_the_published_blocks_hold_its_prefix():
    async def scenario():
        context = zmq.asyncio.Context()  # r1's vLLM publishes its blocks, as over ipc/tcp
        pub = context.socket(zmq.PUB)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        app, fakes = make(kv_events=["tcp://127.0.0.1:1", f"tcp://127.0.0.1:{port}"])
        await app.pool.kv_events[0].on_batch(0, batch())
        sub = app.pool.kv_events[1]
        sub.start()
        while sub.last_seq != 0:  # ZMQ's slow joiner: publish until subscribed
            await pub.send_multipart((b"", (0).to_bytes(8, "big"), holding(fake_ids(TEXT))))
            await asyncio.sleep(0.02)
        body = {"model": MODEL, "prompt": TEXT, "max_tokens": 2, "add_special_tokens": True}
        answer = await post(app, "/v1/completions", body)
        await sub.stop()
        context.destroy(linger=0)
        return answer, app, fakes

    answer, app, fakes = run(scenario())
    assert answer.status_code == 200
    assert routed(app) == [0, 1]  # the approximation knows nothing; r1 told what it holds
    asked = [a for f in fakes for a in f.asked]
    assert asked == [{"model": MODEL, "prompt": TEXT, "add_special_tokens": True}]
    (sent,) = fakes[1].sent  # the backend gets the client's body, no ids added
    assert sent.prompt == TEXT and sent.body["prompt"] == TEXT
    assert "prompt_token_ids" not in sent.body
    assert app.pool.tokenizer.outcomes.get(("tokenized",)) == 1


def test_a_chat_request_goes_where_its_rendered_prompt_is_held():
    async def scenario():
        app, fakes = make()
        held_elsewhere = fake_ids("<system> something else entirely, nothing shared at all")
        await feed(app, [held_elsewhere, fake_ids(chat_text(MESSAGES))])
        answer = await post(app, "/v1/chat/completions", {
            "model": MODEL, "messages": MESSAGES, "max_tokens": 2,
            "chat_template_kwargs": {"style": "terse"}, "reasoning_effort": "none"})
        return answer, app, fakes

    answer, app, fakes = run(scenario())
    assert answer.status_code == 200
    assert routed(app) == [0, 1]
    (asked,) = [a for f in fakes for a in f.asked]
    assert asked == {"model": MODEL, "messages": MESSAGES, "chat_template_kwargs": {
        "style": "terse", "reasoning_effort": "none", "enable_thinking": False}}


def test_a_failing_tokenize_routes_on_the_approximation_counted_and_logged_once(caplog):
    async def scenario():
        app, fakes = make()
        for f in fakes:
            f.tokenize_status = 500
        await feed(app, [None, fake_ids(TEXT)])
        answers = [await post(app, "/v1/completions", {"model": MODEL, "prompt": TEXT,
                                                        "max_tokens": 2}) for _ in range(3)]
        return answers, app, fakes

    with caplog.at_level(logging.WARNING, logger="shunter.gateway"):
        answers, app, fakes = run(scenario())
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert routed(app) == [3, 0]  # approximate: r0 (the smallest), then its own prefix
    assert app.pool.tokenizer.outcomes.get(("failed",)) == 2  # then neither is asked a while
    assert sum(len(f.asked) for f in fakes) == 2
    assert len([r for r in caplog.records if "/tokenize" in r.getMessage()]) == 1


def test_a_slow_tokenize_is_given_up_on_in_bounded_time():
    async def scenario():
        app, fakes = make(tokenize_timeout_s=0.05)
        for f in fakes:
            f.tokenize_delay_s = 5.0
        await feed(app, [None, fake_ids(TEXT)])
        started = asyncio.get_running_loop().time()
        answer = await post(app, "/v1/completions", {"model": MODEL, "prompt": TEXT,
                                                     "max_tokens": 2})
        return answer, asyncio.get_running_loop().time() - started, app

    answer, elapsed_s, app = run(scenario())
    assert answer.status_code == 200 and elapsed_s < 2.0
    assert app.pool.tokenizer.outcomes.get(("failed",)) == 1


def test_no_round_trip_without_an_exact_feed_nor_for_token_ids():
    async def scenario():
        app, fakes = make()  # r0, r1 publish, but neither's history has started: approximate
        await post(app, "/v1/completions", {"model": MODEL, "prompt": TEXT, "max_tokens": 2})
        await feed(app, [None, fake_ids(TEXT)])
        await post(app, "/v1/completions", {"model": MODEL, "prompt": fake_ids(TEXT),
                                            "max_tokens": 2})
        plain = build_app(GatewayParts(app=AppConfig(model_names=(MODEL,)),
                                       router="prefix_affinity"),
                          [BackendSlot(name="p", client=fakes[0])])
        await post(plain, "/v1/completions", {"model": MODEL, "prompt": TEXT, "max_tokens": 2})
        return app, fakes

    app, fakes = run(scenario())
    assert [f.asked for f in fakes] == [[], []]
    assert routed(app)[1] == 1  # the token-id prompt matched r1's blocks without asking


def test_a_repeated_prompt_is_tokenized_once_and_the_cache_is_bounded():
    async def scenario():
        app, fakes = make(max_tokenize_cache_tokens=20)
        await feed(app, [None, fake_ids(TEXT)])
        for prompt in (TEXT, TEXT, "a b c d e f g h", TEXT):  # 14 + 8 tokens > 20: TEXT goes
            await post(app, "/v1/completions", {"model": MODEL, "prompt": prompt,
                                                "max_tokens": 2})
        return app, fakes

    app, fakes = run(scenario())
    assert [a["prompt"] for f in fakes for a in f.asked] == [TEXT, "a b c d e f g h", TEXT]
    assert app.pool.tokenizer.outcomes.get(("cached",)) == 1


def test_tokenize_body_applies_what_the_chat_request_applies_and_skips_what_cannot_match():
    def chat(**body):
        return GenerateRequest(request_id="r", model=MODEL, messages=(), body={
            "messages": MESSAGES, **body})

    assert tokenize_body(chat(add_generation_prompt=False, continue_final_message=True,
                              tools=[{"type": "function"}], documents=[{"t": "x"}],
                              chat_template_kwargs={"enable_thinking": True},
                              reasoning_effort="low", temperature=0.5)) == {
        "model": MODEL, "messages": MESSAGES, "add_generation_prompt": False,
        "continue_final_message": True, "tools": [{"type": "function"}],
        "chat_template_kwargs": {"enable_thinking": True, "documents": [{"t": "x"}],
                                 "reasoning_effort": "low"}}
    assert tokenize_body(chat(cache_salt="s")) is None  # salted blocks match no plain prompt
    assert tokenize_body(chat(truncate_prompt_tokens=8)) is None
    assert tokenize_body(GenerateRequest(request_id="r", model=MODEL, prompt=(1, 2))) is None
