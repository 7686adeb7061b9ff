"""vLLM's KV-cache events -> the router's exact prefix index (`router/exact_index.py`).

vLLM started with `--enable-prefix-caching --kv-events-config '{"enable_kv_cache_events": true,
"publisher": "zmq", "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558"}'`
publishes each engine step's events on a ZMQ PUB socket (`vllm/distributed/kv_events.py`):
multipart (topic, seq as 8 bytes big-endian, payload), the payload a msgpack EventBatch
[ts, [event, ...], data_parallel_rank], each event a map tagged by "type" (BlockStored,
BlockRemoved, AllBlocksCleared; older vLLMs sent [tag, field, ...] arrays, also read here).
A ROUTER replay socket resends the batches from a given seq, then an end marker (seq -1).

One `KvEventSubscriber` per backend with `kv_events` keeps its replica's history complete:
- the first batch seen is seq 0 (the engine's cache was empty): exact from there;
- a later first batch, or a gap: ask the replay socket for what was missed; without one, or if
  it no longer holds it, the replica is marked incomplete and the routers use their
  approximation for it, until its history starts again (seq 0: the engine restarted,
  or AllBlocksCleared);
- a seq that goes back means the engine restarted: its cache starts empty, history from seq 0.
ZMQ reconnects by itself; what was published while disconnected shows up as a gap.
pyzmq and msgpack (the gateway extra) are imported where they are used: the gateway's config
checks these addresses (`check_endpoint`) in a core-only install too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Hashable
from typing import Any

from shunter.router.exact_index import (
    AllBlocksCleared,
    BlockEvent,
    BlocksRemoved,
    BlocksStored,
    ExactPrefixIndex,
)

__all__ = ["KvEventSubscriber", "check_endpoint", "decode_batch"]

log = logging.getLogger("shunter.gateway")

END_SEQ = -1  # the replay socket's end marker
REPLAY_TIMEOUT_S = 2.0
# field order of the array form (vLLM before the tagged-map events)
_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
                  "medium", "lora_name", "extra_keys")


_CONNECT_ENDPOINT = re.compile(r"^(tcp://[^\s:/*]+:(\d+)|ipc://\S+)$")


def check_endpoint(endpoint: str, what: str) -> None:
    """ValueError unless `endpoint` is a ZMQ address to connect to: tcp://HOST:PORT, ipc://PATH."""
    found = _CONNECT_ENDPOINT.match(endpoint)
    if found is None or (found.group(2) is not None and not 0 < int(found.group(2)) < 65536):
        raise ValueError(f"{what} must be an address to connect to, tcp://HOST:PORT or "
                         f"ipc://PATH (vLLM binds tcp://*:PORT; connect to tcp://127.0.0.1:PORT), "
                         f"got {endpoint!r}")


def decode_batch(payload: bytes) -> list[BlockEvent]:
    """A msgpack EventBatch -> its events (unknown event types are skipped); ValueError if
    the payload is not an EventBatch."""
    import msgpack

    try:
        batch = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"not msgpack: {exc}") from None
    if not isinstance(batch, list | tuple) or len(batch) < 2 or not isinstance(batch[1], list):
        raise ValueError(f"not an EventBatch [ts, events, ...]: {batch!r:.200}")
    events = []
    for raw in batch[1]:
        event = _event(raw)
        if event is not None:
            events.append(event)
    return events


def _event(raw: Any) -> BlockEvent | None:
    if isinstance(raw, list | tuple) and raw and isinstance(raw[0], str):
        kind = raw[0]
        fields = dict(zip(_STORED_FIELDS if kind == "BlockStored" else ("block_hashes",),
                          raw[1:], strict=False))
    elif isinstance(raw, dict):
        kind, fields = raw.get("type"), raw
    else:
        raise ValueError(f"not a KV event: {raw!r:.200}")
    if kind == "BlockStored":
        extra = fields.get("extra_keys")
        return BlocksStored(
            engine_hashes=tuple(map(_hashable, fields["block_hashes"])),
            parent_hash=_hashable(fields.get("parent_block_hash")),
            token_ids=tuple(fields["token_ids"]), block_size=int(fields["block_size"]),
            is_salted=bool(fields.get("lora_name") or fields.get("lora_id")
                           or (extra and any(k is not None for k in extra))))
    if kind == "BlockRemoved":
        return BlocksRemoved(tuple(map(_hashable, fields["block_hashes"])))
    if kind == "AllBlocksCleared":
        return AllBlocksCleared()
    return None


def _hashable(value: Any) -> Hashable:
    return tuple(value) if isinstance(value, list) else value


class KvEventSubscriber:
    """Feeds one replica's events into `index` (see the module doc); `start`/`stop` it on the
    gateway's loop."""

    def __init__(self, index: ExactPrefixIndex, replica_id: int, endpoint: str, *,
                 replay_endpoint: str | None = None, block_size: int | None = None,
                 name: str = "", topic: str = "") -> None:
        self.index = index
        self.replica_id = replica_id
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.name = name or f"replica {replica_id}"
        self.topic = topic.encode()
        self.last_seq: int | None = None
        self.num_batches = 0
        self.num_gaps = 0
        self.num_errors = 0  # batches refused (logged once: a wrong block size repeats)
        import zmq.asyncio

        self._context = zmq.asyncio.Context()
        self._task: asyncio.Task[None] | None = None
        index.track(replica_id, block_size)

    @property
    def is_exact(self) -> bool:
        """Whether the replica's history is complete: the routers read its exact state."""
        replica = self.index.blocks(self.replica_id)
        return replica is not None and replica.is_complete and replica.block_size is not None

    def start(self) -> None:
        """Subscribe (needs a running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._context.destroy(linger=0)

    async def on_batch(self, seq: int, payload: bytes) -> None:
        """One published batch, in the order received."""
        expected = 0 if self.last_seq is None else self.last_seq + 1
        if seq < expected and self.last_seq is not None:  # the engine restarted
            log.info("kv events of %s: seq went back to %d, its engine restarted", self.name, seq)
            self.last_seq = None
            expected = 0
        if seq == 0:
            self.index.reset(self.replica_id, is_complete=True)
        elif seq > expected:
            self.num_gaps += 1
            is_replayed = await self._replay(expected, seq)
            if not is_replayed:
                log.warning("kv events of %s: batches %d..%d missed and not replayed; its "
                            "prefix state is approximate until it restarts", self.name,
                            expected, seq - 1)
                self.index.reset(self.replica_id, is_complete=False)
        self._apply(payload)
        self.last_seq = seq

    def _apply(self, payload: bytes) -> None:
        self.num_batches += 1
        try:
            self.index.apply(self.replica_id, decode_batch(payload))
        except (ValueError, KeyError, TypeError) as exc:
            self.num_errors += 1
            log.log(logging.ERROR if self.num_errors == 1 else logging.DEBUG,
                    "kv events of %s: %s", self.name, exc)
            self.index.reset(self.replica_id, is_complete=False)

    async def _replay(self, start: int, stop: int) -> bool:
        """Apply batches start..stop-1 from the replay socket; False if it cannot give them all."""
        if self.replay_endpoint is None:
            return False
        import zmq

        socket = self._context.socket(zmq.DEALER)
        socket.connect(self.replay_endpoint)
        try:
            await socket.send_multipart((b"", start.to_bytes(8, "big")))
            batches: list[tuple[int, bytes]] = []
            while True:
                frames = await asyncio.wait_for(socket.recv_multipart(), REPLAY_TIMEOUT_S)
                seq = int.from_bytes(frames[-2], "big", signed=True)
                if seq == END_SEQ:
                    break
                if start <= seq < stop:
                    batches.append((seq, frames[-1]))
        except TimeoutError:
            return False
        finally:
            socket.close(linger=0)
        if [seq for seq, _ in batches] != list(range(start, stop)):
            return False
        if start == 0:
            self.index.reset(self.replica_id, is_complete=True)
        for _, payload in batches:
            self._apply(payload)
        return True

    async def _run(self) -> None:
        import zmq

        socket = self._context.socket(zmq.SUB)
        socket.setsockopt(zmq.SUBSCRIBE, self.topic)
        socket.connect(self.endpoint)
        try:
            while True:
                frames = await socket.recv_multipart()
                if len(frames) != 3:
                    log.error("kv events of %s: expected 3 frames, got %d", self.name,
                              len(frames))
                    continue
                await self.on_batch(int.from_bytes(frames[1], "big"), frames[2])
        finally:
            socket.close(linger=0)

