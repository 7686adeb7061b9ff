"""Cost: one number in seconds per replica, the time this request costs there; the least wins.

It folds cache hits and load into one unit, so neither needs a threshold to switch between them.
Its own expected latency on the replica, plus the delay it imposes on the others there:

    prefill_s      = uncached prompt tokens / prefill_tokens_per_s     (a cache hit costs nothing)
    queue_s        = f * waiting prompt tokens / prefill_tokens_per_s  (prefill work queued ahead)
    slot_s         = excess * L * step_s / max_num_seqs when the batch is full (`excess` requests
                     must finish first; slots free at max_num_seqs per L * step_s)
    decode_s       = decode_weight * L * step_s      (decode pressure: every running request makes
                     each step, so each of the L output tokens, slower)
    interference_s = interference_weight * prefill_s * (waiting + running requests)
    kv_penalty_s   = kv_penalty_s * ((u - knee) / (1 - knee)) / (1 - u) for u > kv_knee, else 0
                     (convex: a nearly full KV cache means preemptions and recomputation)

L = min(expected_output_tokens, max_output_tokens) (the true length is never seen); step_s =
the view's `decode_step_s`, else `decode_step_base_s + decode_step_per_seq_s * (running + 1)`;
the prefill speed is the view's `prefill_tokens_per_s`, else this router's; u = projected KV
usage: blocks held + this request's new blocks (uncached prompt + L), over the total. Waiting
prompts are left out of u: the replica admits them only as memory frees, so they wait (queue_s)
rather than preempt, and counting them twice would price a long queue as a full cache. Cached
prefixes come from this router's approximate index (`router/prefix_index.py`).

interference_s: the replica's requests share its GPU, so every second of new prefill work
delays each of them by about a second (new arrivals queue behind it, running ones get slower
steps). Without it the rule is myopic: under load it trades a cache hit for a slightly shorter
queue, recomputes the prefix elsewhere, and the extra work lengthens every queue after it.
With it, idle replicas are chosen by latency and busy ones by total work.

f is the uncached fraction of the replica's queue. A snapshot counts a waiting prompt's tokens
whole, although its cached prefix will cost nothing, so without f the replica that holds a hot
prefix looks the busiest exactly because it is the cheapest. The queue holds the latest
requests sent there, so f is a token-weighted moving average of (uncached / prompt tokens) over
what this router sent to the replica, over a window of `queue_window_tokens` (1 at first).

Ties (within 1 ns) break at random from the injected RNG, or by lowest id with
`randomize_ties=False`; `temperature_s > 0` samples a softmin instead,
P(i) ~ exp(-(cost_i - min cost) / temperature_s).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from shunter.core.types import RequestSpec, check_number
from shunter.router.interface import ReplicaView, RouteDecision
from shunter.router.prefix_index import PrefixIndex, PromptBlocks

__all__ = ["CostParams", "CostRouter", "ReplicaCost", "replica_cost"]

TIE_TOLERANCE_S = 1e-9
MIN_FREE_FRACTION = 1e-3  # caps the KV penalty's pole at u = 1; beyond it the penalty grows linearly


@dataclass(frozen=True, slots=True, kw_only=True)
class CostParams:
    """The router's speed defaults (used when a view does not carry its own) and weights."""

    prefill_tokens_per_s: float = 10_000.0  # ~ an 8B model on one A100 at a 2k-token chunk
    decode_step_base_s: float = 0.012  # one decode step of a small batch (weights read once)
    decode_step_per_seq_s: float = 0.0001  # each running request adds its KV reads to a step
    expected_output_tokens: int = 128
    decode_weight: float = 1.0  # 0 routes for time to first token only
    interference_weight: float = 1.0  # 0 prices only the request's own latency
    kv_knee: float = 0.8
    kv_penalty_s: float = 0.1

    def __post_init__(self) -> None:
        for name in ("prefill_tokens_per_s", "decode_step_base_s", "expected_output_tokens"):
            check_number(name, getattr(self, name), gt=0)
        for name in ("decode_step_per_seq_s", "decode_weight", "interference_weight",
                     "kv_penalty_s"):
            check_number(name, getattr(self, name), ge=0)
        check_number("kv_knee", self.kv_knee, ge=0, lt=1)


@dataclass(frozen=True, slots=True)
class ReplicaCost:
    """The terms of one replica's cost, in seconds."""

    replica_id: int
    prefill_s: float
    queue_s: float
    slot_s: float
    decode_s: float
    interference_s: float
    kv_penalty_s: float

    @property
    def total_s(self) -> float:
        return (self.prefill_s + self.queue_s + self.slot_s + self.decode_s + self.interference_s
                + self.kv_penalty_s)


def replica_cost(request: RequestSpec, view: ReplicaView, num_cached_tokens: int,
                 params: CostParams, uncached_fraction: float = 1.0) -> ReplicaCost:
    """The expected latency of `request` on `view`'s replica, given its cached prefix there and
    the fraction of the replica's waiting tokens that will really be computed."""
    p = params
    num_queued = uncached_fraction * view.num_waiting_tokens
    num_output = min(p.expected_output_tokens, request.max_output_tokens or p.expected_output_tokens)
    prefill_tps = view.prefill_tokens_per_s or p.prefill_tokens_per_s
    step_s = view.decode_step_s
    if step_s is None:
        step_s = p.decode_step_base_s + p.decode_step_per_seq_s * (view.num_running + 1)
    num_uncached = max(0, request.num_prompt_tokens - num_cached_tokens)
    slot_s = 0.0
    if view.max_num_seqs is not None:
        excess = view.num_requests + 1 - view.max_num_seqs
        if excess > 0:
            slot_s = excess * num_output * step_s / view.max_num_seqs
    prefill_s = num_uncached / prefill_tps
    return ReplicaCost(
        replica_id=view.replica_id,
        prefill_s=prefill_s,
        queue_s=num_queued / prefill_tps,
        slot_s=slot_s,
        decode_s=p.decode_weight * num_output * step_s,
        interference_s=p.interference_weight * prefill_s * view.num_requests,
        kv_penalty_s=_kv_penalty_s(view, num_uncached + num_output, p),
    )


def _kv_penalty_s(view: ReplicaView, num_new_tokens: int, p: CostParams) -> float:
    num_used = view.num_total_blocks - view.num_free_blocks
    num_wanted = num_used + -(-num_new_tokens // view.block_size)
    usage = num_wanted / view.num_total_blocks
    if usage <= p.kv_knee:
        return 0.0
    return p.kv_penalty_s * (usage - p.kv_knee) / (1.0 - p.kv_knee) / max(1.0 - usage,
                                                                          MIN_FREE_FRACTION)


class CostRouter:
    __slots__ = ("index", "params", "queue_window_tokens", "randomize_ties", "rng",
                 "temperature_s", "uncached_fraction")

    def __init__(self, *, seed: int = 0, rng: random.Random | None = None,
                 temperature_s: float = 0.0, randomize_ties: bool = True,
                 queue_window_tokens: int = 16_384, prefill_tokens_per_s: float = 10_000.0,
                 decode_step_base_s: float = 0.012, decode_step_per_seq_s: float = 0.0001,
                 expected_output_tokens: int = 128, decode_weight: float = 1.0,
                 interference_weight: float = 1.0, kv_knee: float = 0.8,
                 kv_penalty_s: float = 0.1) -> None:
        check_number("temperature_s", temperature_s, ge=0)
        check_number("queue_window_tokens", queue_window_tokens, ge=1)
        self.params = CostParams(
            prefill_tokens_per_s=prefill_tokens_per_s, decode_step_base_s=decode_step_base_s,
            decode_step_per_seq_s=decode_step_per_seq_s,
            expected_output_tokens=expected_output_tokens, decode_weight=decode_weight,
            interference_weight=interference_weight, kv_knee=kv_knee, kv_penalty_s=kv_penalty_s)
        self.rng = rng if rng is not None else random.Random(seed)
        self.temperature_s = temperature_s
        self.randomize_ties = randomize_ties
        self.queue_window_tokens = queue_window_tokens
        self.index = PrefixIndex()
        self.uncached_fraction: dict[int, float] = {}  # replica id -> f, see the module doc

    def costs(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> list[ReplicaCost]:
        """Every replica's cost for `request` (read-only: nothing is recorded)."""
        matches = self.index.match_all(self.index.blocks_of(request), replicas)
        return self._costs(request, replicas, matches)

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        blocks = self.index.blocks_of(request)
        matches = self.index.match_all(blocks, replicas)
        costs = self._costs(request, replicas, matches)
        i = self._pick([c.total_s for c in costs], replicas)
        self._record(request, blocks, replicas[i], matches[i])
        return RouteDecision(replicas[i].replica_id)

    def observe(self, request: RequestSpec, view: ReplicaView) -> None:
        """Record that `request` went to `view`'s replica when another rule chose it."""
        blocks = self.index.blocks_of(request)
        self._record(request, blocks, view, self.index.match_tokens(view.replica_id, blocks))

    def _record(self, request: RequestSpec, blocks: PromptBlocks, view: ReplicaView,
                num_cached_tokens: int) -> None:
        num_prompt = request.num_prompt_tokens
        weight = num_prompt / (num_prompt + self.queue_window_tokens)
        f = self.uncached_fraction.get(view.replica_id, 1.0)
        f += weight * ((num_prompt - num_cached_tokens) / num_prompt - f)
        self.uncached_fraction[view.replica_id] = f
        self.index.record(blocks, view)

    def _costs(self, request: RequestSpec, replicas: Sequence[ReplicaView],
               matches: list[int]) -> list[ReplicaCost]:
        return [replica_cost(request, v, m, self.params,
                             self.uncached_fraction.get(v.replica_id, 1.0))
                for v, m in zip(replicas, matches, strict=True)]

    def _pick(self, costs: list[float], replicas: Sequence[ReplicaView]) -> int:
        best = min(costs)
        if self.temperature_s > 0:
            weights = [math.exp(-(c - best) / self.temperature_s) for c in costs]
            return self.rng.choices(range(len(costs)), weights)[0]
        ties = [i for i, c in enumerate(costs) if c <= best + TIE_TOLERANCE_S]
        if self.randomize_ties and len(ties) > 1:
            return self.rng.choice(ties)
        return min(ties, key=lambda i: replicas[i].replica_id)
