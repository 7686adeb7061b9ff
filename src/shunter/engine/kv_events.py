"""The engine's KV-cache events on ZMQ, in vLLM's format: any vLLM-events consumer reads them
(the gateway's `KvEventSubscriber`, llm-d, Dynamo).

`ZmqKvEventPublisher` binds a PUB socket and sends one batch per engine step that had events
(`core/kv/events.py`), as vLLM 0.32's `ZmqEventPublisher` does: three frames (topic, seq as 8
bytes big-endian, payload), seq counting from 0 (the cache was empty then), the payload a
msgpack EventBatch [ts, [event, ...], data_parallel_rank] whose events are maps tagged by
"type", with vLLM's fields in vLLM's order (`encode_batch`). Block hashes are sent as unsigned
64-bit ints (vLLM's `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES` form). An optional ROUTER replay socket
answers a request [empty frame, start seq as 8 bytes] with (empty, topic, seq, payload) for
every buffered batch from that seq, then (empty, empty, seq -1, empty).

The engine's step thread only enqueues; a thread of the publisher's own owns both sockets
(ZMQ sockets are not thread-safe), encodes, sends, and serves replay requests between batches.
pyzmq and msgpack (the gateway extra) are imported when a publisher is made.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from shunter.core.kv.events import AllBlocksCleared, BlockRemoved, BlockStored, KvEvent

__all__ = ["DEFAULT_BUFFER_STEPS", "ZmqKvEventPublisher", "check_bind_endpoint", "encode_batch"]

log = logging.getLogger("shunter.engine")

DEFAULT_BUFFER_STEPS = 10_000  # batches kept for replay (vLLM's default)
DEFAULT_HWM = 100_000  # the PUB socket's high-water mark (vLLM's default)
MEDIUM_GPU = "GPU"  # vLLM's name for the device cache, whatever the device
END_SEQ = (-1).to_bytes(8, "big", signed=True)  # the replay socket's end marker
REPLAY_POLL_S = 0.05  # how long an idle publisher waits for a batch before checking replay
_HASH_MASK = (1 << 64) - 1

_BIND_ENDPOINT = re.compile(r"^(tcp://(\*|[^\s:/*]+):(\d+)|ipc://\S+)$")


def check_bind_endpoint(endpoint: str, what: str) -> None:
    """ValueError unless `endpoint` is a ZMQ address to bind: tcp://HOST:PORT (HOST `*` for
    every interface, PORT 0 for any free one) or ipc://PATH."""
    found = _BIND_ENDPOINT.match(endpoint)
    if found is None or (found.group(3) is not None and not 0 <= int(found.group(3)) < 65536):
        raise ValueError(f"{what} must be an address to bind, tcp://HOST:PORT (tcp://*:PORT "
                         f"for every interface) or ipc://PATH, got {endpoint!r}")


def _event_map(event: KvEvent) -> dict[str, Any]:
    """One event as vLLM's msgspec encodes it: the "type" tag, then every field without a
    default, then those set away from their default (group_idx 0: one KV cache group)."""
    match event:
        case BlockStored():
            return {"type": "BlockStored",
                    "block_hashes": [h & _HASH_MASK for h in event.block_hashes],
                    "parent_block_hash": (None if event.parent_block_hash is None
                                          else event.parent_block_hash & _HASH_MASK),
                    "token_ids": list(event.token_ids), "block_size": event.block_size,
                    "lora_id": None, "medium": MEDIUM_GPU, "lora_name": None, "group_idx": 0}
        case BlockRemoved():
            return {"type": "BlockRemoved",
                    "block_hashes": [h & _HASH_MASK for h in event.block_hashes],
                    "medium": MEDIUM_GPU, "group_idx": 0}
        case AllBlocksCleared():
            return {"type": "AllBlocksCleared"}


def encode_batch(events: Sequence[KvEvent], ts: float, data_parallel_rank: int = 0) -> bytes:
    """A step's events as a msgpack EventBatch [ts, [event, ...], data_parallel_rank]."""
    import msgpack

    return msgpack.packb([float(ts), [_event_map(e) for e in events], data_parallel_rank],
                         use_bin_type=True)


class ZmqKvEventPublisher:
    """Publishes KV-event batches on `endpoint` (bound), replaying from `replay_endpoint`
    (bound, optional) the last `buffer_steps` batches; `publish` is safe from any thread."""

    def __init__(self, endpoint: str, *, replay_endpoint: str | None = None,
                 buffer_steps: int = DEFAULT_BUFFER_STEPS, hwm: int = DEFAULT_HWM,
                 topic: str = "", data_parallel_rank: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        check_bind_endpoint(endpoint, "kv events endpoint")
        if replay_endpoint is not None:
            check_bind_endpoint(replay_endpoint, "kv events replay endpoint")
        if buffer_steps < 1:
            raise ValueError(f"buffer_steps must be >= 1, got {buffer_steps}")
        import zmq

        self._zmq = zmq
        self._topic = topic.encode()
        self._rank = data_parallel_rank
        self._clock = clock
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._queue: queue.SimpleQueue[tuple[float, Sequence[KvEvent]] | None] = \
            queue.SimpleQueue()
        self._context = zmq.Context()
        self._pub = self._context.socket(zmq.PUB)
        self._replay = None if replay_endpoint is None else self._context.socket(zmq.ROUTER)
        try:
            self._pub.set_hwm(hwm)
            self.endpoint = _bind(self._pub, endpoint)
            self.replay_endpoint = None if self._replay is None or replay_endpoint is None \
                else _bind(self._replay, replay_endpoint)
        except BaseException:
            self._context.destroy(linger=0)
            raise
        self.num_batches = 0  # batches queued (by the publishing thread)
        self.num_published = 0  # batches sent; the last one's seq is num_published - 1
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="shunter-kv-events", daemon=True)
        self._thread.start()

    def publish(self, events: Sequence[KvEvent]) -> None:
        """Queue one step's events as the next batch (nothing is sent for no events, nor once
        closed: an engine still stepping must not fail for it)."""
        if events and not self._closed:
            self.num_batches += 1
            self._queue.put((self._clock(), tuple(events)))

    def close(self) -> None:
        """Send what is queued, stop the thread, close the sockets (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._context.destroy(linger=0)

    def _run(self) -> None:
        zmq = self._zmq
        while True:
            if self._replay is not None and self._replay.poll(0):
                try:
                    self._serve_replay()
                except zmq.ZMQError as exc:  # a client gone mid-answer: nothing to fix
                    log.warning("kv events replay: %s", exc)
            try:
                item = self._queue.get(timeout=REPLAY_POLL_S if self._replay is not None
                                       else None)
            except queue.Empty:
                continue
            if item is None:
                return
            ts, events = item
            seq = self.num_published
            payload = encode_batch(events, ts, self._rank)
            self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload))
            self._buffer.append((seq, payload))
            self.num_published = seq + 1

    def _serve_replay(self) -> None:
        assert self._replay is not None
        frames = self._replay.recv_multipart()
        if len(frames) != 3:
            log.warning("kv events replay: a request of %d frames, expected 3", len(frames))
            return
        client, _, start = frames
        start_seq = int.from_bytes(start, "big")
        for seq, payload in self._buffer:
            if seq >= start_seq:
                self._replay.send_multipart((client, b"", self._topic, seq.to_bytes(8, "big"),
                                             payload))
        self._replay.send_multipart((client, b"", b"", END_SEQ, b""))


def _bind(socket: Any, endpoint: str) -> str:
    """Bind; the address bound (a tcp port 0 resolved). ValueError if it cannot be bound."""
    import zmq

    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ValueError(f"cannot bind KV events to {endpoint!r}: {exc}") from None
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        bound = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        return bound.replace("0.0.0.0", "*")
    return endpoint
