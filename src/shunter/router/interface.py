"""Cluster routing: pure functions from replica snapshots to a decision.

A router never sees a live engine, socket or scheduler: only `ReplicaView` snapshots, taken
by whoever owns the replicas (the simulator's cluster or the gateway's live router loop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shunter.core.types import RequestSpec

__all__ = ["ReplicaView", "RouteDecision", "Router", "is_load_blind", "live_refusal", "min_key",
           "reads_speeds"]


@dataclass(slots=True, kw_only=True)
class ReplicaView:
    """A snapshot of one replica's load, as a router may see it (possibly stale). Read-only by
    contract: routers never write to it, and keep none past the decision it was given for (a
    simulated cluster hands a replica's view out again, brought up to date, until its load
    changes). Not a frozen dataclass because a simulated cluster builds one per replica per
    request, and a frozen one costs four times as much to build."""

    replica_id: int
    num_waiting: int = 0
    num_running: int = 0
    num_waiting_tokens: int = 0  # prompt tokens not yet computed, over waiting requests
    num_running_tokens: int = 0  # tokens held in KV by running requests
    num_free_blocks: int = 0
    num_total_blocks: int = 1
    block_size: int = 16
    taken_at_s: float = 0.0
    # Speed coefficients (optional; the owner of the replicas fills them from its cost model or
    # from measurements; routers fall back to their own defaults when they are None):
    prefill_tokens_per_s: float | None = None  # prompt tokens the replica prefills per second
    decode_step_s: float | None = None  # wall time of one decode step at the current batch
    max_num_seqs: int | None = None  # most requests the replica runs in one batch
    # LoRA adapters in a GPU slot of the replica or wanted by a request queued or running there
    # (empty without LoRA): what adapter-affinity routing reads (`lora_affinity`)
    lora_ids: frozenset[str] = frozenset()

    @property
    def num_requests(self) -> int:
        return self.num_waiting + self.num_running

    @property
    def num_load_tokens(self) -> int:
        return self.num_waiting_tokens + self.num_running_tokens

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_total_blocks


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Which replica gets a request."""

    replica_id: int


class Router(Protocol):
    """Chooses a replica for each request from snapshots.

    A router whose decisions never read replica state may say so with a class attribute
    `is_load_blind = True`: the simulator then hands it views whose load fields are not kept
    current, and can split a run across processes (`shunter.sim.partition`).
    A router that needs state only the simulator has declares why with a class attribute
    `live_refusal = "..."`; the live gateway then refuses it at start-up (`live_refusal`).
    A router that never reads the speed fields (`prefill_tokens_per_s`, `decode_step_s`) may
    say so with `reads_speeds = False`: the simulator then leaves them None instead of
    evaluating its cost model for every replica at every arrival (`reads_speeds`).
    A router whose decision is always the first of the views it is given with the least
    `key(view)`, reading nothing else and keeping no state, may declare that key with a class
    attribute `min_key = staticmethod(key)`, provided the key of a replica's view never falls
    while only time passes (its steps run on; nothing is added, started, finished or moved):
    the simulator then keeps the replicas ordered by key instead of building every view at
    every arrival (`min_key`, `shunter.sim.ranking`).
    """

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        """Pick a replica for `request`; `replicas` is never empty."""
        ...


def is_load_blind(router: Router) -> bool:
    """Whether `router`'s class declares `is_load_blind = True` (see `Router`): the one place
    the declaration is read, so an undeclared router counts as reading replica state."""
    return getattr(type(router), "is_load_blind", False) is True


def reads_speeds(router: Router) -> bool:
    """Whether `router` may read a view's speed fields: True unless its class declares
    `reads_speeds = False` (see `Router`)."""
    return getattr(type(router), "reads_speeds", True) is not False


def min_key(router: Router) -> Callable[[ReplicaView], Any] | None:
    """The key `router`'s class declares it routes by the least of (`min_key`, see `Router`),
    or None."""
    key = getattr(type(router), "min_key", None)
    return key if callable(key) else None


def live_refusal(router: Router) -> str | None:
    """Why `router` cannot route live requests (its class's `live_refusal`), or None."""
    reason = getattr(type(router), "live_refusal", None)
    return reason if isinstance(reason, str) else None
