"""TetriInfer's pools live: the decode pool of an in-process engine backend split in two.

`topology = "tetriinfer"` on a `kind = "engine"` backend (or `shunter serve --topology
tetriinfer`) splits its `replicas` into `num_prefill_replicas` prefill replicas (default half,
rounded up, as the simulator's) and decode replicas, every one with a token budget of
TETRIINFER_CHUNK_TOKENS (its prompts prefilled in chunks of 512, as the simulator's topology
sets; the backend's own `max_num_batched_tokens` wins, as a scenario's [scheduler] does).

The gateway's pool holds the prefill replicas: its router picks one per request, as for any
backend. Their clients (`shunter.engine.disagg.HandoffEngineClient`) ask this `DecodePool` for
the request's decode replica at arrival, as the simulator's disaggregated cluster does
(`shunter.sim.disagg`): `decode_router` (default "tetriinfer", the simulator's class from the
router registry, with `decode_router_params`) sees `ReplicaView`s of the decode replicas,
reconciled as the gateway reconciles its own (`replica.py`: what it sent there and has not seen
finish, plus the engines' own reported load). After the prefill replica samples the first
token the request's KV moves to that decode replica, which streams the rest. Ours: a request
counts on its decode replica as waiting from its arrival and as running from its handoff; no
decode step time is measured there (the decode replicas stream no chunk through the gateway), so
the router's `default_decode_step_s` prices its ledger, where the simulator's views carry its
cost model's step time; with a backend `profile` the decode replicas take theirs from it.

/metrics: `shunter_kv_handoffs_total{decode_replica}` and `shunter_kv_handoff_seconds`
(from the prefill replica letting the request go to its KV in the decode replica's blocks),
`shunter_kv_handoff_failures_total`, and `shunter_decode_replica_in_flight`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from shunter.backend.protocol import EngineClient
from shunter.core.types import RequestId, RequestSpec
from shunter.gateway.breaker import BreakerConfig, CircuitBreaker
from shunter.gateway.metrics import Counter, GatewayMetrics, Gauge, Histogram
from shunter.gateway.replica import Replica
from shunter.gateway.speed import SpeedModel
from shunter.router.interface import Router
from shunter.router.registry import make_router

__all__ = ["DEFAULT_DECODE_ROUTER", "TETRIINFER_CHUNK_TOKENS", "TOPOLOGIES", "DecodePool",
           "check_topology", "num_prefill_replicas"]

TOPOLOGIES = ("tetriinfer",)
# the simulator's prefill chunk under this topology (`shunter.sim.config`, which the gateway
# may not import; a test keeps the two equal)
TETRIINFER_CHUNK_TOKENS = 512
DEFAULT_DECODE_ROUTER = "tetriinfer"
_TOPOLOGY_KEYS = ("num_prefill_replicas", "decode_router", "decode_router_params")


class _TopologyKeys(Protocol):
    name: str
    kind: str
    replicas: int
    topology: str | None
    num_prefill_replicas: int | None
    decode_router: str | None
    decode_router_params: dict[str, Any] | None
    kv_events_publish: str | None
    exact_prefix: bool


def num_prefill_replicas(backend: _TopologyKeys) -> int:
    """How many of the backend's replicas prefill (the rest decode)."""
    return backend.num_prefill_replicas or -(-backend.replicas // 2)


def check_topology(backend: _TopologyKeys) -> None:
    """ValueError naming the key unless the backend's topology keys can be honoured."""
    where = f"backend {backend.name}"
    if backend.topology is None:
        given = [k for k in _TOPOLOGY_KEYS if getattr(backend, k) is not None]
        if given:
            raise ValueError(f"{where}: {', '.join(given)} only apply with topology = "
                             f"\"{TOPOLOGIES[0]}\"")
        return
    if backend.topology not in TOPOLOGIES:
        raise ValueError(f"{where}: unknown topology {backend.topology!r}; valid: "
                         f"{', '.join(TOPOLOGIES)}")
    if backend.kind != "engine":
        raise ValueError(f"{where}: topology needs kind = \"engine\": only in-process replicas "
                         f"hand a request's KV from prefill to decode; a {backend.kind} backend "
                         "cannot")
    num_prefill = backend.num_prefill_replicas
    if backend.replicas < 2 or (num_prefill is not None
                                and not 1 <= num_prefill < backend.replicas):
        raise ValueError(f"{where}: topology {backend.topology!r} needs replicas >= 2 with >= 1 "
                         f"prefill and >= 1 decode; got replicas = {backend.replicas}, "
                         f"num_prefill_replicas = {num_prefill or 'half'}")
    if backend.kv_events_publish is not None or backend.exact_prefix:
        raise ValueError(f"{where}: kv_events_publish and exact_prefix are not supported with "
                         "topology (a prefill replica's events would miss the blocks its "
                         "requests take to the decode pool)")
    params = dict(backend.decode_router_params or {})
    if params.get("predictor") == "oracle":
        raise ValueError(f"{where}: decode_router_params predictor = \"oracle\" reads the true "
                         "output length, which only the simulator knows")
    try:
        make_router(backend.decode_router or DEFAULT_DECODE_ROUTER, **params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: decode_router: {exc}") from None


@dataclass(slots=True, eq=False)
class DecodePool:
    """The decode replicas of one split backend and the router that picks among them (the
    `DecodeChooser` of its prefill replicas' clients; a gateway service: `stop` closes them)."""

    replicas: list[Replica]
    router: Router
    clock: Callable[[], float] = time.monotonic
    handoffs: Counter = field(default_factory=lambda: Counter(
        "shunter_kv_handoffs_total", "Requests whose KV moved from a prefill replica to this "
        "decode replica.", ("decode_replica",)))
    handoff_s: Histogram = field(default_factory=lambda: Histogram(
        "shunter_kv_handoff_seconds", "From a prefill replica letting a request go to its KV "
        "in the decode replica's blocks.", ("decode_replica",)))
    failures: Counter = field(default_factory=lambda: Counter(
        "shunter_kv_handoff_failures_total", "Requests that failed in or after their handoff.",
        ("decode_replica",)))
    # request -> [decode replica id, prompt tokens, handed off yet]
    _requests: dict[RequestId, list[Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, clients: Sequence[EngineClient], router: str | None,
           router_params: Mapping[str, Any] | None, *, max_num_seqs: int | None = None,
           block_size: int | None = None, speeds: SpeedModel | None = None) -> DecodePool:
        replicas = [Replica(replica_id=i, name=f"{name}-decode-{i}", client=c,
                            breaker=CircuitBreaker(BreakerConfig()),
                            max_concurrency=max_num_seqs or 1, max_num_seqs=max_num_seqs,
                            block_size=block_size, speeds=speeds)
                    for i, c in enumerate(clients)]
        return cls(replicas, make_router(router or DEFAULT_DECODE_ROUTER,
                                         **dict(router_params or {})))

    async def refresh(self) -> None:
        """Read each decode replica's own load (an in-process engine's: no round trip)."""
        for replica in self.replicas:
            load = await replica.client.load()
            if load is not None:
                replica.on_report(load)

    async def choose(self, spec: RequestSpec) -> int:
        """The decode replica for `spec`, by the decode router over their views now."""
        await self.refresh()
        now = self.clock()
        offered = [r for r in self.replicas if r.can_route(now)] or self.replicas
        spec = replace(spec, arrival_s=now)  # (the router's ledger runs on the gateway's clock)
        decision = self.router.route(spec, [r.view(now) for r in offered])
        chosen = next((r for r in offered if r.replica_id == decision.replica_id), None)
        assert chosen is not None, f"decode router chose replica {decision.replica_id}, not offered"
        chosen.on_dispatch(spec.num_prompt_tokens, now)
        self._requests[spec.request_id] = [chosen.replica_id, spec.num_prompt_tokens, False]
        return chosen.replica_id

    def on_handoff(self, request_id: RequestId, seconds: float) -> None:
        entry = self._requests.get(request_id)
        if entry is None:
            return
        replica = self.replicas[entry[0]]
        replica.on_first_output(entry[1])
        replica.breaker.on_success(self.clock())
        entry[2] = True
        self.handoffs.inc((replica.name,))
        self.handoff_s.observe(seconds, (replica.name,))

    def on_done(self, request_id: RequestId, *, is_failed: bool) -> None:
        entry = self._requests.pop(request_id, None)
        if entry is None:
            return
        replica = self.replicas[entry[0]]
        replica.on_done(entry[1], is_started=entry[2])
        if is_failed:
            replica.breaker.on_failure(self.clock())
            self.failures.inc((replica.name,))
        elif not entry[2]:
            replica.breaker.on_abandoned()

    def bind(self, metrics: GatewayMetrics) -> None:
        """Show this pool's series on the gateway's /metrics."""
        metrics.extra += [self.handoffs.render, self.handoff_s.render, self.failures.render]
        metrics.gauges.append(Gauge(
            "shunter_decode_replica_in_flight", "Requests routed to each decode replica and "
            "not yet finished.", ("replica",),
            lambda: [((r.name,), float(r.num_in_flight)) for r in self.replicas]))

    def start(self) -> None:
        """(Nothing runs in the background: views are read when a request is routed.)"""

    async def stop(self) -> None:
        """Close the decode replicas (the pool closes the prefill ones)."""
        for replica in self.replicas:
            await replica.client.close()
