"""The engine publishes its KV-cache events as vLLM does: the gateway's subscriber, reading
them over ZMQ into an exact prefix index, knows what the engine's cache really holds, through
shared prefixes, evictions, a late join (replay) and a reset."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
zmq = pytest.importorskip("zmq")
msgpack = pytest.importorskip("msgpack")

from shunter.core.kv.events import (  # noqa: E402
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvEventLog,
)
from shunter.core.kv.hashing import BlockHasher  # noqa: E402
from shunter.engine.config import EngineConfig  # noqa: E402
from shunter.engine.kv_events import (  # noqa: E402
    ZmqKvEventPublisher,
    check_bind_endpoint,
    encode_batch,
)
from shunter.engine.llm import LLMEngine  # noqa: E402
from shunter.engine.sampler import SamplingParams  # noqa: E402
from shunter.gateway.kv_events import KvEventSubscriber, decode_batch  # noqa: E402
from shunter.router.exact_index import ExactPrefixIndex  # noqa: E402

BS = 4
M64 = (1 << 64) - 1
# vLLM 0.32's msgspec encoding of KVEventBatch(ts=1.5, events=[BlockStored(block_hashes=[1,
# -5 & M64], parent_block_hash=None, token_ids=[1..8], block_size=4, lora_id=None,
# medium="GPU", lora_name=None, group_idx=0), BlockRemoved([7], "GPU", group_idx=0),
# AllBlocksCleared(), BlockStored([9], parent -5 & M64, [1..4], ...)], data_parallel_rank=0)
VLLM_BYTES = (
    b"\x93\xcb?\xf8\x00\x00\x00\x00\x00\x00\x94\x89\xa4type\xabBlockStored\xacblock_hashes"
    b"\x92\x01\xcf\xff\xff\xff\xff\xff\xff\xff\xfb\xb1parent_block_hash\xc0\xa9token_ids\x98"
    b"\x01\x02\x03\x04\x05\x06\x07\x08\xaablock_size\x04\xa7lora_id\xc0\xa6medium\xa3GPU\xa9"
    b"lora_name\xc0\xa9group_idx\x00\x84\xa4type\xacBlockRemoved\xacblock_hashes\x91\x07\xa6"
    b"medium\xa3GPU\xa9group_idx\x00\x81\xa4type\xb0AllBlocksCleared\x89\xa4type\xabBlockStored"
    b"\xacblock_hashes\x91\t\xb1parent_block_hash\xcf\xff\xff\xff\xff\xff\xff\xff\xfb\xa9"
    b"token_ids\x94\x01\x02\x03\x04\xaablock_size\x04\xa7lora_id\xc0\xa6medium\xa3GPU\xa9"
    b"lora_name\xc0\xa9group_idx\x00\x00")


def test_batches_are_byte_for_byte_vllms():
    events = [BlockStored(block_hashes=(1, -5), parent_block_hash=None,
                          token_ids=tuple(range(1, 9)), block_size=4),
              BlockRemoved((7,)), AllBlocksCleared(),
              BlockStored(block_hashes=(9,), parent_block_hash=-5, token_ids=(1, 2, 3, 4),
                          block_size=4)]
    assert encode_batch(events, 1.5) == VLLM_BYTES
    assert len(decode_batch(VLLM_BYTES)) == 4


@pytest.mark.parametrize("endpoint", ["tcp://*:5557", "tcp://127.0.0.1:0", "ipc:///tmp/kv"])
def test_bind_endpoints_are_accepted(endpoint):
    check_bind_endpoint(endpoint, "kv events")


@pytest.mark.parametrize("endpoint", ["127.0.0.1:5557", "tcp://h", "tcp://h:70000", ""])
def test_malformed_bind_endpoints_are_refused(endpoint):
    with pytest.raises(ValueError, match="address to bind"):
        check_bind_endpoint(endpoint, "kv events")


def test_an_address_in_use_is_a_clear_error(tmp_path):
    first = ZmqKvEventPublisher("tcp://127.0.0.1:0")
    try:
        with pytest.raises(ValueError, match="cannot bind KV events"):
            ZmqKvEventPublisher(first.endpoint)
    finally:
        first.close()


def make_engine(loaded, num_blocks=12):
    return LLMEngine(EngineConfig.of(model="tiny", dtype="float32", num_blocks=num_blocks,
                                  block_size=BS, max_num_batched_tokens=64, max_num_seqs=4),
                     loaded=loaded)


def cached_tokens(engine: LLMEngine, prompt: list[int]) -> int:
    """What the engine's prefix cache holds of `prompt`, in whole blocks, from its start."""
    hashes: list[int] = []
    BlockHasher(BS).extend(hashes, len(prompt), prompt)
    matched = 0
    for block_hash in hashes:
        if engine.scheduler.kv.pool.lookup(block_hash) is None:
            break
        matched += BS
    return matched


async def caught_up(subscriber: KvEventSubscriber, publisher: ZmqKvEventPublisher) -> None:
    for _ in range(500):
        if subscriber.last_seq == publisher.num_batches - 1:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"subscriber at {subscriber.last_seq}, published "
                         f"{publisher.num_batches}")


def prompts(rng: random.Random) -> list[list[int]]:
    stems = [[rng.randrange(3, 256) for _ in range(n)] for n in (8, 13, 5)]
    return [rng.choice(stems) + [rng.randrange(3, 256) for _ in range(rng.randrange(1, 9))]
            for _ in range(12)]


def test_subscriber_index_equals_the_engine_cache(tiny_loaded, tmp_path):
    engine = make_engine(tiny_loaded)
    publisher = ZmqKvEventPublisher(f"ipc://{tmp_path}/kv",
                                    replay_endpoint=f"ipc://{tmp_path}/replay")
    engine.add_kv_event_sink(publisher.publish)
    removed = KvEventLog()  # a second sink: counts the evictions the test must exercise
    engine.add_kv_event_sink(removed.events.extend)
    all_prompts = prompts(random.Random(1))

    async def scenario():
        index = ExactPrefixIndex()
        subscriber = KvEventSubscriber(index, 0, publisher.endpoint,
                                       replay_endpoint=publisher.replay_endpoint, block_size=BS)
        subscriber.start()
        await asyncio.sleep(0.3)  # connected (a batch it still misses comes back by replay)
        try:
            for i in range(0, len(all_prompts), 3):
                engine.generate(all_prompts[i:i + 3], SamplingParams(max_tokens=3))
                await caught_up(subscriber, publisher)
                for prompt in all_prompts:
                    assert index.match_tokens(0, tuple(prompt)) == cached_tokens(engine, prompt)
            assert index.num_tokens(0) == len(engine.scheduler.kv.pool.cached) * BS
            assert any(isinstance(e, BlockRemoved) for e in removed.events)
            engine.reset_prefix_cache()
            await caught_up(subscriber, publisher)
            assert index.num_tokens(0) == 0 and index.blocks(0).is_complete
            assert subscriber.num_errors == 0
        finally:
            await subscriber.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    finally:
        publisher.close()


def test_late_subscriber_gets_the_history_by_replay(tiny_loaded, tmp_path):
    engine = make_engine(tiny_loaded, num_blocks=32)
    publisher = ZmqKvEventPublisher(f"ipc://{tmp_path}/kv",
                                    replay_endpoint=f"ipc://{tmp_path}/replay")
    engine.add_kv_event_sink(publisher.publish)
    first, second = prompts(random.Random(2))[:2]

    async def scenario():
        engine.generate([first], SamplingParams(max_tokens=2))  # nobody listens yet
        assert publisher.num_batches > 0
        index = ExactPrefixIndex()
        subscriber = KvEventSubscriber(index, 0, publisher.endpoint,
                                       replay_endpoint=publisher.replay_endpoint, block_size=BS)
        subscriber.start()
        try:
            await asyncio.sleep(0.3)  # the subscription reaches the publisher
            engine.generate([second], SamplingParams(max_tokens=2))
            await caught_up(subscriber, publisher)
            assert subscriber.num_gaps == 1 and index.blocks(0).is_complete
            for prompt in (first, second):
                assert index.match_tokens(0, tuple(prompt)) == cached_tokens(engine, prompt) > 0
        finally:
            await subscriber.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    finally:
        publisher.close()


def test_replay_socket_answers_from_a_seq_then_ends(tmp_path):
    publisher = ZmqKvEventPublisher(f"ipc://{tmp_path}/kv",
                                    replay_endpoint=f"ipc://{tmp_path}/replay", buffer_steps=2)
    try:
        for _ in range(3):
            publisher.publish([AllBlocksCleared()])
        publisher.publish([])  # no events: no batch
        context = zmq.Context()
        socket = context.socket(zmq.DEALER)
        socket.connect(publisher.replay_endpoint)
        for _ in range(200):
            if publisher.num_published == 3:
                break
            time.sleep(0.01)
        socket.send_multipart((b"", (0).to_bytes(8, "big")))
        seqs = []
        while True:
            assert socket.poll(5000), "no replay answer"
            frames = socket.recv_multipart()
            seq = int.from_bytes(frames[-2], "big", signed=True)
            if seq == -1:
                break
            seqs.append(seq)
            assert decode_batch(frames[-1]) == [decode_batch(VLLM_BYTES)[2]]
        assert seqs == [1, 2]  # the buffer keeps the last two
        context.destroy(linger=0)
    finally:
        publisher.close()
