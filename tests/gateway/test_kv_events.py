"""The KV-event subscriber against synthetic vLLM batches: msgpack EventBatches as vLLM's
`ZmqEventPublisher` sends them, over real ZMQ sockets on loopback."""

import asyncio

import msgpack
import pytest
import zmq
import zmq.asyncio
from tests.gateway.factories import run

from shunter.backend.protocol import GenerateRequest
from shunter.errors import ConfigError
from shunter.gateway.app import AppConfig
from shunter.gateway.config import load_config
from shunter.gateway.factory import GatewayParts, build_app
from shunter.gateway.fake import FakeEngineClient
from shunter.gateway.kv_events import KvEventSubscriber, check_endpoint, decode_batch
from shunter.gateway.replica import BackendSlot
from shunter.router.exact_index import (
    AllBlocksCleared,
    BlocksRemoved,
    BlocksStored,
    ExactPrefixIndex,
)

BS = 4
PROMPT = tuple(range(1, 17))  # four blocks


def stored(hashes, parent, tokens, **extra):
    return {"type": "BlockStored", "block_hashes": list(hashes), "parent_block_hash": parent,
            "token_ids": list(tokens), "block_size": BS, "lora_id": None, "medium": "GPU",
            "lora_name": None, **extra}


def batch(*events):
    return msgpack.packb([1.0, list(events), None])


def blocks(j):
    """The batch that stores block j of PROMPT (engine hash j + 1, parent j)."""
    return batch(stored([j + 1], j or None, PROMPT[j * BS:(j + 1) * BS]))


def test_decode_reads_tagged_maps_and_the_older_array_form():
    payload = batch(stored([b"a", 2], None, PROMPT[:8]),
                    {"type": "BlockRemoved", "block_hashes": [2], "medium": "GPU"},
                    {"type": "AllBlocksCleared"}, {"type": "SomethingNew"})
    assert decode_batch(payload) == [
        BlocksStored(engine_hashes=(b"a", 2), parent_hash=None, token_ids=PROMPT[:8],
                     block_size=BS),
        BlocksRemoved((2,)), AllBlocksCleared()]
    old = msgpack.packb([0.0, [["BlockStored", [1], None, [1, 2, 3, 4], 4, None, "GPU"]]])
    assert decode_batch(old)[0].token_ids == (1, 2, 3, 4)
    salted = decode_batch(batch(stored([1], None, PROMPT[:4], extra_keys=[["salt"]])))
    assert salted[0].is_salted
    with pytest.raises(ValueError, match="EventBatch"):
        decode_batch(msgpack.packb({"ts": 1}))


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5557", "tcp://vllm-0:80", "ipc:///tmp/kv"])
def test_connect_endpoints_are_accepted(endpoint):
    check_endpoint(endpoint, "kv_events")


@pytest.mark.parametrize("endpoint", ["tcp://*:5557", "127.0.0.1:5557", "tcp://h:0",
                                      "tcp://h:70000", "http://h:1", ""])
def test_bind_or_malformed_endpoints_are_refused(endpoint):
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        check_endpoint(endpoint, "kv_events")


def subscriber(replay=None):
    index = ExactPrefixIndex()
    return index, KvEventSubscriber(index, 0, "tcp://127.0.0.1:1", replay_endpoint=replay,
                                    block_size=BS)


def test_history_from_seq_0_is_exact_a_gap_without_replay_is_not_a_restart_is_again():
    async def scenario():
        index, sub = subscriber()
        assert index.match_tokens(0, PROMPT) is None
        await sub.on_batch(0, blocks(0))
        await sub.on_batch(1, blocks(1))
        assert index.match_tokens(0, PROMPT) == 8
        await sub.on_batch(3, blocks(3))  # seq 2 lost, nothing to replay it from
        assert index.match_tokens(0, PROMPT) is None and sub.num_gaps == 1
        await sub.on_batch(0, blocks(0))  # the engine restarted: its cache is empty again
        assert index.match_tokens(0, PROMPT) == 4
        await sub.stop()

    run(scenario())


def test_a_late_joiner_is_approximate_until_the_cache_is_cleared():
    async def scenario():
        index, sub = subscriber()
        await sub.on_batch(5, blocks(0))
        assert index.match_tokens(0, PROMPT) is None
        await sub.on_batch(6, batch({"type": "AllBlocksCleared"}))
        await sub.on_batch(7, blocks(0))
        assert index.match_tokens(0, PROMPT) == 4
        await sub.stop()

    run(scenario())


def test_a_wrong_block_size_is_logged_and_leaves_the_replica_approximate(caplog):
    async def scenario():
        index = ExactPrefixIndex()
        sub = KvEventSubscriber(index, 0, "tcp://127.0.0.1:1", block_size=16, name="vllm-a")
        await sub.on_batch(0, blocks(0))
        assert index.match_tokens(0, PROMPT) is None
        await sub.stop()

    run(scenario())
    assert "vllm-a" in caplog.text and "set block_size = 4" in caplog.text


async def replay_server(socket, published):
    """vLLM's `_service_replay`: every buffered batch from the asked seq, then END_SEQ."""
    while True:
        client, _, start = await socket.recv_multipart()
        for seq, payload in published:
            if seq >= int.from_bytes(start, "big"):
                await socket.send_multipart((client, b"", b"", seq.to_bytes(8, "big"), payload))
        await socket.send_multipart((client, b"", b"", (-1).to_bytes(8, "big", signed=True), b""))


def test_over_sockets_a_missed_batch_is_replayed():
    async def scenario():
        context = zmq.asyncio.Context()
        pub, router = context.socket(zmq.PUB), context.socket(zmq.ROUTER)
        pub_port = pub.bind_to_random_port("tcp://127.0.0.1")
        replay_port = router.bind_to_random_port("tcp://127.0.0.1")
        published = [(j, blocks(j)) for j in range(4)]
        server = asyncio.create_task(replay_server(router, published))
        index = ExactPrefixIndex()
        sub = KvEventSubscriber(index, 0, f"tcp://127.0.0.1:{pub_port}",
                                replay_endpoint=f"tcp://127.0.0.1:{replay_port}", block_size=BS)
        sub.start()
        # batches 0..2 are published before the subscription is up (ZMQ's slow joiner) or
        # skipped: replay fills them in when 3 arrives
        for seq, payload in published[:3]:
            await pub.send_multipart((b"", seq.to_bytes(8, "big"), payload))
        while sub.last_seq != 3:
            await pub.send_multipart((b"", (3).to_bytes(8, "big"), published[3][1]))
            await asyncio.sleep(0.05)
            if sub.last_seq == 3:
                break
        assert index.match_tokens(0, PROMPT) == 16
        await sub.stop()
        server.cancel()
        context.destroy(linger=0)

    run(scenario())


def write(tmp_path, backend):
    path = tmp_path / "gateway.toml"
    path.write_text('[[backends]]\nname = "v"\n' + backend)
    return path


def test_config_takes_kv_events_on_vllm_backends(tmp_path):
    config = load_config(write(tmp_path, 'url = "http://h:8000"\nblock_size = 32\n'
                               'kv_events = "tcp://127.0.0.1:5557"\n'
                               'kv_events_replay = "tcp://127.0.0.1:5558"\n'))
    assert config.backends[0].kv_events == "tcp://127.0.0.1:5557"
    assert config.backends[0].kv_events_replay == "tcp://127.0.0.1:5558"


@pytest.mark.parametrize(("backend", "message"), [
    ('url = "http://h"\nkv_events = "tcp://*:5557"\n', "kv_events must be an address"),
    ('url = "http://h"\nkv_events = 5557\n', "kv_events"),
    ('url = "http://h"\nkv_events_replay = "tcp://h:1"\n', "no kv_events"),
    ('kind = "fake"\nkv_events = "tcp://h:1"\n', "only apply to vLLM backends"),
])
def test_config_refuses_bad_kv_events_naming_the_backend(tmp_path, backend, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(tmp_path, backend))
    assert "[[backends]] #1" in str(info.value)


def slot(name, kv_events=None):
    return BackendSlot(name=name, client=FakeEngineClient(), kv_events=kv_events, block_size=BS)


def test_the_app_feeds_the_routers_prefix_index_from_backends_with_kv_events():
    parts = GatewayParts(app=AppConfig(model_names=("m",)), router="prefix_affinity")
    app = build_app(parts, [slot("a"), slot("b", "tcp://127.0.0.1:1")])
    (subscriber,) = app.pool.kv_events
    assert subscriber.replica_id == 1 and subscriber.name == "b"
    assert app.pool.router.index.exact is subscriber.index
    assert subscriber.index.blocks(1).block_size == BS
    assert subscriber.index.blocks(0) is None  # replica a: the approximation, as before


def test_a_router_without_a_prefix_index_refuses_kv_events():
    parts = GatewayParts(app=AppConfig(model_names=("m",)), router="round_robin")
    with pytest.raises(ValueError, match="does not read"):
        build_app(parts, [slot("a"), slot("b", "tcp://127.0.0.1:1")])


def test_a_token_id_prompt_reaches_the_router_with_its_ids():
    app = build_app(GatewayParts(app=AppConfig(model_names=("m",))), [slot("a")])
    spec = app.pool.spec(GenerateRequest(request_id="r", model="m", prompt=PROMPT))
    assert spec.prompt_token_ids == PROMPT and spec.num_prompt_tokens == len(PROMPT)
    assert spec.hash_ids is None  # the approximation hashes the ids too


# ---- Shunter's own engines: fed in-process, or publishing as vLLM does ------------------------

@pytest.mark.parametrize(("backend", "message"), [
    ('kind = "engine"\nkv_events_publish = "tcp://h"\n', "kv_events_publish must be an address"),
    ('kind = "engine"\nkv_events_publish = "tcp://*:0"\n', "kv_events_publish must be an address"),
    ('kind = "engine"\nkv_events_replay_publish = "ipc:///tmp/r"\n', "no kv_events_publish"),
    ('kind = "engine"\nkv_events_publish = "ipc:///tmp/k"\n'
     'kv_events_replay_publish = "ipc:///tmp/k"\n', "must be different"),
    ('url = "http://h"\nkv_events_publish = "ipc:///tmp/k"\n', 'in-process engines'),
    ('kind = "engine"\nkv_events = "tcp://h:1"\n', "feed the router with exact_prefix"),
    ('url = "http://h"\nexact_prefix = true\n', "exact_prefix only applies"),
])
def test_config_refuses_bad_kv_events_publish_naming_the_backend(tmp_path, backend, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(tmp_path, backend))
    assert "[[backends]] #1" in str(info.value) and "backend v" in str(info.value)


def test_config_takes_kv_events_publish_on_engine_backends(tmp_path):
    from shunter.gateway.kv_endpoints import replica_endpoint

    config = load_config(write(tmp_path, 'kind = "engine"\nreplicas = 2\n'
                               'kv_events_publish = "tcp://*:5557"\n'
                               'kv_events_replay_publish = "tcp://*:5600"\n'))
    backend = config.backends[0]
    assert (backend.kv_events_publish, backend.kv_events_replay_publish) == \
        ("tcp://*:5557", "tcp://*:5600")
    assert [replica_endpoint("tcp://*:5557", i) for i in range(2)] == \
        ["tcp://*:5557", "tcp://*:5558"]
    assert replica_endpoint("ipc:///run/kv", 1) == "ipc:///run/kv-1"


@pytest.fixture(scope="module")
def tiny_engine_loaded(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.engine.tiny import make_tiny_hf_model, save_tiny_hf_dir

    from shunter.engine.loader import load_hf_dir

    return load_hf_dir(save_tiny_hf_dir(make_tiny_hf_model(seed=0),
                                        tmp_path_factory.mktemp("tiny")))


def engine_maker(loaded, made):
    """An EngineMaker of tiny engines (block size BS, a small cache); `made` gets their LLMEngines."""
    from shunter.engine.async_client import AsyncEngineClient
    from shunter.engine.backend import EngineBackend
    from shunter.engine.config import EngineConfig
    from shunter.engine.llm import LLMEngine

    def make(backend, model):
        config = EngineConfig.of(model="tiny", dtype="float32", num_blocks=16, block_size=BS,
                              max_num_batched_tokens=64, max_num_seqs=4, num_threads=1)
        engines = [LLMEngine(config, loaded=loaded) for _ in range(backend.replicas)]
        made.extend(engines)
        return [(EngineBackend(AsyncEngineClient(e), max_num_seqs=4, kv_block_size=BS), 4)
                for e in engines]
    return make


def engine_cached_tokens(engine, prompt):
    from tests.engine.test_kv_events import BS as ENGINE_BS
    from tests.engine.test_kv_events import cached_tokens

    assert ENGINE_BS == BS
    return cached_tokens(engine, prompt)


async def generate(client, prompt, request_id):
    request = GenerateRequest(request_id=request_id, model="m", prompt=tuple(prompt),
                              max_tokens=3, temperature=0.0)
    return [chunk async for chunk in client.submit(request)]


def test_in_process_engines_feed_the_gateways_exact_index(tiny_engine_loaded):
    from shunter.gateway.config import BackendConfig
    from shunter.gateway.factory import build_backends

    made = []
    slots = build_backends((BackendConfig(name="e", kind="engine", replicas=2,
                                          exact_prefix=True),), "m",
                           engine_maker(tiny_engine_loaded, made))
    parts = GatewayParts(app=AppConfig(model_names=("m",)), router="prefix_affinity")
    app = build_app(parts, slots)
    exact = app.pool.router.index.exact
    assert app.pool.kv_events == []  # no socket: the engines call the index themselves
    stem = list(range(10, 30))
    prompts = [stem + [1, 2, 3], stem[:9] + [7] * 9, stem + [4]]

    async def scenario():
        assert [exact.match_tokens(i, tuple(prompts[0])) for i in (0, 1)] == [0, 0]
        await generate(slots[0].client, prompts[0], "a")
        await generate(slots[1].client, prompts[1], "b")
        for engine, replica_id in zip(made, (0, 1), strict=True):
            for prompt in prompts:
                assert exact.match_tokens(replica_id, tuple(prompt)) == \
                    engine_cached_tokens(engine, prompt)
        assert exact.match_tokens(0, tuple(prompts[2])) == 20
        assert exact.match_tokens(1, tuple(prompts[2])) == 8
        await app.pool.stop()

    run(scenario())


def test_in_process_engines_feed_no_exact_index_unless_asked(tiny_engine_loaded):
    """By default the router keeps its dispatch-time approximation, as the simulator does."""
    from shunter.gateway.config import BackendConfig
    from shunter.gateway.factory import build_backends

    slots = build_backends((BackendConfig(name="e", kind="engine", replicas=2),), "m",
                           engine_maker(tiny_engine_loaded, []))
    app = build_app(GatewayParts(app=AppConfig(model_names=("m",)), router="prefix_affinity"),
                    slots)
    assert app.pool.router.index.exact is None
    run(app.pool.stop())


def test_engine_backends_publish_for_a_gateway_in_front(tiny_engine_loaded, tmp_path):
    from shunter.gateway.config import BackendConfig
    from shunter.gateway.factory import build_backends

    made = []
    backend = BackendConfig(name="e", kind="engine", replicas=2,
                            kv_events_publish=f"ipc://{tmp_path}/kv",
                            kv_events_replay_publish=f"ipc://{tmp_path}/replay")
    slots = build_backends((backend,), "m", engine_maker(tiny_engine_loaded, made))
    prompt = list(range(40, 57))

    async def scenario():
        # the gateway in front: remote backends reading replica 1's events
        front = build_app(GatewayParts(app=AppConfig(model_names=("m",)), router="cost"),
                          [BackendSlot(name="r1", client=FakeEngineClient(),
                                       kv_events=f"ipc://{tmp_path}/kv-1",
                                       kv_events_replay=f"ipc://{tmp_path}/replay-1")])
        (subscriber,) = front.pool.kv_events
        subscriber.start()
        await asyncio.sleep(0.3)
        await generate(slots[1].client, prompt, "a")
        for _ in range(300):
            if subscriber.last_seq is not None and \
                    subscriber.last_seq + 1 == slots[1].client.kv_publisher.num_batches:
                break
            await asyncio.sleep(0.01)
        assert subscriber.index.match_tokens(0, tuple(prompt)) == \
            engine_cached_tokens(made[1], prompt) == 16
        await front.pool.stop()
        for slot in slots:
            await slot.client.close()

    run(scenario())


def test_an_address_taken_is_a_config_error_naming_the_backend(tiny_engine_loaded):
    from shunter.gateway.config import BackendConfig
    from shunter.gateway.factory import build_backends

    context = zmq.Context()
    holder = context.socket(zmq.PUB)
    port = holder.bind_to_random_port("tcp://127.0.0.1")
    taken = BackendConfig(name="f", kind="engine", replicas=2,
                          kv_events_publish=f"tcp://127.0.0.1:{port - 1}")
    try:
        with pytest.raises(ConfigError, match="backend f: kv_events_publish: cannot bind"):
            build_backends((taken,), "m", engine_maker(tiny_engine_loaded, []))
    finally:
        context.destroy(linger=0)
