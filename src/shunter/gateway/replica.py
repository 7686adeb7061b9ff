"""One backend as the gateway tracks it: its client, breaker, health and load accounting.

Load is known two ways, and reconciled: the gateway counts what it dispatched and has not seen
finish (fresh, but blind to other clients of the backend), and the backend reports its queue
and KV usage (complete, but as old as the last scrape). A router sees the gateway's own counts
plus whatever the backend reported beyond what the gateway itself had in flight at that scrape:
that excess is other clients' work. Nothing dispatched since the scrape is counted twice or lost.

Speed is known from a profile of the backend, if one is configured (`speeds`), else from its
running traffic (`meter`, see `speed.py`), else not at all: the router's defaults apply.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from shunter.backend.protocol import BackendLoad, EngineClient
from shunter.core.types import DEFAULT_BLOCK_SIZE
from shunter.gateway.breaker import BreakerConfig, CircuitBreaker
from shunter.gateway.speed import SpeedMeter, SpeedModel, StreamTimer
from shunter.router.interface import ReplicaView

__all__ = ["CHARS_PER_TOKEN", "DEFAULT_MAX_CONCURRENCY", "BackendSlot", "Replica",
           "estimate_tokens", "text_hash_ids"]

DEFAULT_MAX_CONCURRENCY = 256  # vLLM's default max_num_seqs: beyond it a backend only queues
CHARS_PER_TOKEN = 4  # the gateway has no tokenizer: a prompt's size is estimated from its text
NOMINAL_TOTAL_BLOCKS = 65_536  # for a backend that reports KV usage only as a fraction


def estimate_tokens(num_chars: int) -> int:
    return max(1, -(-num_chars // CHARS_PER_TOKEN))


def text_hash_ids(text: str, block_size_tokens: int = DEFAULT_BLOCK_SIZE) -> tuple[int, ...]:
    """Prefix-block ids of a prompt's text, one per `block_size_tokens` estimated tokens.

    Equal texts give equal ids at equal positions, which is all a prefix-aware router needs.
    """
    step = block_size_tokens * CHARS_PER_TOKEN
    return tuple(zlib.crc32(text[i:i + step].encode()) for i in range(0, len(text), step))


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendSlot:
    """A built backend client with the gateway's settings for it."""

    name: str
    client: EngineClient
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_num_seqs: int | None = None
    block_size: int | None = None
    speeds: SpeedModel | None = None  # from a profile; None: measured from its traffic
    kv_events: str | None = None  # its vLLM's KV-event socket (and replay socket), if any
    kv_events_replay: str | None = None
    exact_prefix: bool = False  # an in-process engine feeding the router its KV events

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"backend {self.name}: max_concurrency must be >= 1")


@dataclass(slots=True, kw_only=True)
class Replica:
    replica_id: int
    name: str
    client: EngineClient
    breaker: CircuitBreaker
    max_concurrency: int
    max_num_seqs: int | None = None
    block_size: int | None = None  # the backend's KV block size, if known
    speeds: SpeedModel | None = None  # from a profile of the backend, if configured
    meter: SpeedMeter = field(default_factory=SpeedMeter)
    is_healthy: bool = True
    is_draining: bool = False  # the autoscaler is taking it away: no new requests
    num_waiting: int = 0  # dispatched by the gateway, no output yet
    num_running: int = 0  # dispatched by the gateway, streaming
    num_waiting_tokens: int = 0
    num_running_tokens: int = 0
    reported: BackendLoad | None = None
    own_waiting_at_report: int = 0
    own_running_at_report: int = 0
    num_other_running: int = 0  # other clients' requests running there, at the last report

    @classmethod
    def of_slot(cls, slot: BackendSlot, replica_id: int, breaker: BreakerConfig) -> Replica:
        return cls(replica_id=replica_id, name=slot.name, client=slot.client,
                   breaker=CircuitBreaker(breaker), max_concurrency=slot.max_concurrency,
                   max_num_seqs=slot.max_num_seqs, block_size=slot.block_size,
                   speeds=slot.speeds)

    @property
    def num_in_flight(self) -> int:
        return self.num_waiting + self.num_running

    def can_route(self, now_s: float) -> bool:
        return self.is_healthy and not self.is_draining and self.breaker.can_send(now_s)

    def on_dispatch(self, num_prompt_tokens: int, now_s: float) -> StreamTimer:
        """A request goes to this backend; the timer measures its stream (`meter.on_chunk`)."""
        rep = self.reported
        is_clean = (self.num_waiting == 0
                    and (self.max_num_seqs is None or self.num_in_flight < self.max_num_seqs)
                    and (rep is None or rep.num_waiting <= self.own_waiting_at_report))
        self.num_waiting += 1
        self.num_waiting_tokens += num_prompt_tokens
        self.breaker.on_send()
        return StreamTimer(now_s, is_clean)

    def on_first_output(self, num_prompt_tokens: int) -> None:
        self.num_waiting -= 1
        self.num_waiting_tokens -= num_prompt_tokens
        self.num_running += 1
        self.num_running_tokens += num_prompt_tokens

    def on_done(self, num_prompt_tokens: int, *, is_started: bool,
                timer: StreamTimer | None = None) -> None:
        if timer is not None:
            self.meter.on_done(timer, num_prompt_tokens)
        if is_started:
            self.num_running -= 1
            self.num_running_tokens -= num_prompt_tokens
        else:
            self.num_waiting -= 1
            self.num_waiting_tokens -= num_prompt_tokens
        assert self.num_waiting >= 0 and self.num_running >= 0, "in-flight count went negative"

    def on_report(self, load: BackendLoad) -> None:
        self.reported = load
        self.own_waiting_at_report = self.num_waiting
        self.own_running_at_report = self.num_running
        self.num_other_running = max(0, load.num_running - self.num_running)

    def view(self, now_s: float) -> ReplicaView:
        """The reconciled snapshot a router sees."""
        waiting, running = self.num_waiting, self.num_running
        waiting_tokens, running_tokens = self.num_waiting_tokens, self.num_running_tokens
        total_blocks, free_blocks = NOMINAL_TOTAL_BLOCKS, NOMINAL_TOTAL_BLOCKS
        rep = self.reported
        if rep is not None:
            other_waiting = max(0, rep.num_waiting - self.own_waiting_at_report)
            other_running = self.num_other_running
            per_request = (waiting_tokens + running_tokens) // max(1, waiting + running)
            waiting += other_waiting
            running += other_running
            waiting_tokens += other_waiting * per_request
            running_tokens += other_running * per_request
            total_blocks = rep.num_total_blocks or NOMINAL_TOTAL_BLOCKS
            free_blocks = rep.num_free_blocks if rep.num_free_blocks is not None \
                else round(total_blocks * (1.0 - rep.kv_usage))
        if self.speeds is not None:
            prefill_tps: float | None = self.speeds.prefill_tokens_per_s
            decode_s = self.speeds.decode_step_s(running, running_tokens)
        else:
            prefill_tps = self.meter.prefill_tokens_per_s
            decode_s = self.meter.decode_step_s(running)
        return ReplicaView(
            replica_id=self.replica_id, num_waiting=waiting, num_running=running,
            num_waiting_tokens=waiting_tokens, num_running_tokens=running_tokens,
            num_free_blocks=free_blocks, num_total_blocks=total_blocks,
            block_size=self.block_size or DEFAULT_BLOCK_SIZE, taken_at_s=now_s,
            prefill_tokens_per_s=prefill_tps, decode_step_s=decode_s,
            max_num_seqs=self.max_num_seqs)
