"""Autoscaling: when a cluster adds a replica and which one it drains, from replica snapshots.

One decision for every runtime (Llumnix's instance scaling, Sun et al. OSDI'24, section 4.4.3,
and the released code's `avg_load` scaling policy). Whoever owns the replicas calls
`Autoscaler.decide` every `interval_s` with the views of the replicas that serve (ready and not
draining) and the number still starting (provisioned, loading the model), and carries out what
it returns: the simulator from its event loop (`shunter.sim.autoscale`), the gateway from its
replica loop.

**The load** is the cluster's, pooled over the serving replicas as if they were one instance
(Llumnix's `avg_load`: sums of blocks and requests, then one ratio), by `metric`:

- `kv_demand` (default): (used KV blocks + blocks the queued prompts need) / KV blocks: the
  share of the cluster's KV memory its work claims, above 1 when the queues hold more than fits;
- `freeness`: Llumnix's own, minus its freeness: -(free blocks - blocks of queued prompts) /
  requests, so minus the free KV blocks per request (-inf when idle). Llumnix's defaults
  (`SCALE_UP_THRESHOLD = -10`, `SCALE_DOWN_THRESHOLD = -60`) are this metric's;
- `concurrency`: requests (waiting and running) per replica, Knative's concurrency target
  (KServe, and the request-count scalers in front of LLM servers): for backends that report no
  KV cache (any OpenAI server), and exact live, where the gateway counts what it dispatched.

A queued prompt needs ceil(num_waiting_tokens / block_size) blocks per replica. A starting
replica counts as an empty one whose KV capacity is the serving replicas' mean, so a scale-up
under way is not asked for again.

**The decision** (at most one kind per call; the cooldowns run from the last decision that did
something, which `decide` assumes was carried out):

1. fewer than `min_replicas` serving + starting: add up to it, cooldowns aside;
2. more than `max_replicas`: drain the least loaded down to it (when nothing is starting);
3. load > `scale_up_load`, `scale_up_cooldown_s` after the last action, below the maximum: add
   the fewest empty replicas that bring the projected load to `scale_up_load` or below (at
   least one, at most up to the maximum);
4. nothing starting, more than `min_replicas` serving, `scale_down_cooldown_s` after the last
   action, and the load the others would carry without the least loaded replica (all the
   requests, its KV capacity gone: Llumnix's scale-down test) < `scale_down_load`: drain that
   one replica. Least loaded = lowest load by the same metric on its view alone; ties: fewer
   requests, then the newest (highest) id.

`drain` says how the owner empties a draining replica: "migrate" its running requests away
(live migration), or "wait" for them to finish; either way it gets no new request and goes
once empty. `provision_s` is the delay from a scale-up decision until the replica serves: a
modelled delay in the simulator, the real provisioning and model load time live.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

from shunter.core.types import check_number
from shunter.errors import ConfigError
from shunter.router.interface import ReplicaView

__all__ = ["DEFAULT_LOADS", "DRAIN_MODES", "METRICS", "AutoscaleConfig", "Autoscaler",
           "ScaleDecision", "pooled_load", "replica_load"]

DRAIN_MODES = ("migrate", "wait")
# metric -> (scale_up_load, scale_down_load) when the config leaves them out
DEFAULT_LOADS: dict[str, tuple[float, float]] = {"kv_demand": (0.8, 0.4),
                                                 "freeness": (-10.0, -60.0),
                                                 "concurrency": (32.0, 8.0)}
METRICS = tuple(DEFAULT_LOADS)


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoscaleConfig:
    """Bounds, load thresholds and timings of autoscaling (see the module docstring)."""

    min_replicas: int = 1
    max_replicas: int = 16
    metric: str = "kv_demand"
    scale_up_load: float | None = None  # None: DEFAULT_LOADS[metric]
    scale_down_load: float | None = None
    interval_s: float = 10.0  # how often to decide (Llumnix: SCALING_INTERVAL = 10)
    scale_up_cooldown_s: float = 0.0
    scale_down_cooldown_s: float = 30.0
    provision_s: float = 30.0  # decision -> serving: provisioning plus model load
    drain: str = "migrate"

    def __post_init__(self) -> None:
        for name in ("min_replicas", "max_replicas"):
            value = getattr(self, name)
            if type(value) is not int:
                raise ConfigError(f"{name} must be a whole number, got {value!r}")
        if self.max_replicas < 1:
            raise ConfigError(f"max_replicas must be >= 1, got {self.max_replicas}")
        if self.min_replicas < 1:
            raise ConfigError(f"min_replicas must be >= 1 (scale to zero is not modelled), "
                              f"got {self.min_replicas}")
        if self.max_replicas < self.min_replicas:
            raise ConfigError(f"max_replicas ({self.max_replicas}) must be >= min_replicas "
                              f"({self.min_replicas})")
        if self.metric not in DEFAULT_LOADS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.drain not in DRAIN_MODES:
            raise ConfigError(f"drain must be one of {', '.join(DRAIN_MODES)}, got {self.drain!r}")
        up, down = DEFAULT_LOADS[self.metric]
        for name, default in (("scale_up_load", up), ("scale_down_load", down)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
            _check(name, getattr(self, name))
        up, down = self.loads
        if self.metric in ("kv_demand", "concurrency") and up <= 0:
            raise ConfigError(f"scale_up_load must be > 0 for metric {self.metric}, got {up}")
        if down >= up:
            raise ConfigError(f"scale_down_load ({down}) must be below scale_up_load ({up})")
        _check("interval_s", self.interval_s, gt=0)
        for name in ("scale_up_cooldown_s", "scale_down_cooldown_s", "provision_s"):
            _check(name, getattr(self, name), ge=0)

    @property
    def loads(self) -> tuple[float, float]:
        """(scale_up_load, scale_down_load), the metric's defaults filled in."""
        up, down = self.scale_up_load, self.scale_down_load
        assert up is not None and down is not None, "filled by __post_init__"
        return up, down

    @classmethod
    def from_table(cls, table: Mapping[str, object], where: str) -> AutoscaleConfig:
        """The config a TOML table (or flag's JSON) describes; ConfigError naming `where` and
        the key for an unknown key, a value of the wrong type or contradictory limits."""
        kinds = {f.name: _KINDS.get(f.name, "number") for f in fields(cls)}
        for key, value in table.items():
            if key not in kinds:
                raise ConfigError(f"{where}: unknown key {key!r}; valid: "
                                  f"{', '.join(sorted(kinds))}")
            kind = kinds[key]
            ok = (isinstance(value, str) if kind == "string" else
                  type(value) is int if kind == "whole number" else
                  isinstance(value, int | float) and not isinstance(value, bool))
            if not ok:
                raise ConfigError(f"{where}: {key} must be a {kind}, got {value!r}")
        try:
            return cls(**table)  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


_KINDS = {"min_replicas": "whole number", "max_replicas": "whole number", "metric": "string",
          "drain": "string"}


def _check(name: str, value: object, **bounds: float) -> None:
    try:
        check_number(name, value, **bounds)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """What to do now: start `num_add` replicas, drain the replicas `drain_ids`."""

    num_add: int = 0
    drain_ids: tuple[int, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.num_add and not self.drain_ids


NO_CHANGE = ScaleDecision()


@dataclass(frozen=True, slots=True)
class _Pool:
    """Sums over replicas, as one instance."""

    num_total_blocks: float
    num_free_blocks: float
    num_waiting_blocks: int
    num_requests: int
    num_replicas: float

    @classmethod
    def of(cls, views: Sequence[ReplicaView]) -> _Pool:
        return cls(sum(v.num_total_blocks for v in views), sum(v.num_free_blocks for v in views),
                   sum(-(-v.num_waiting_tokens // v.block_size) for v in views),
                   sum(v.num_requests for v in views), len(views))

    def resized(self, num_replicas: float) -> _Pool:
        """The same work on `num_replicas` more (or, negative, fewer) replicas of the mean
        KV capacity."""
        num_blocks = num_replicas * self.num_total_blocks / self.num_replicas
        return _Pool(self.num_total_blocks + num_blocks, self.num_free_blocks + num_blocks,
                     self.num_waiting_blocks, self.num_requests,
                     self.num_replicas + num_replicas)


def _kv_demand(pool: _Pool) -> float:
    demand = pool.num_total_blocks - pool.num_free_blocks + pool.num_waiting_blocks
    if pool.num_total_blocks <= 0:
        return math.inf if demand > 0 else 0.0
    return demand / pool.num_total_blocks


def _minus_freeness(pool: _Pool) -> float:
    if pool.num_requests == 0:
        return -math.inf
    return -(pool.num_free_blocks - pool.num_waiting_blocks) / pool.num_requests


def _concurrency(pool: _Pool) -> float:
    if pool.num_replicas <= 0:
        return math.inf if pool.num_requests else 0.0
    return pool.num_requests / pool.num_replicas


_LOADS: dict[str, Callable[[_Pool], float]] = {"kv_demand": _kv_demand,
                                               "freeness": _minus_freeness,
                                               "concurrency": _concurrency}


def pooled_load(metric: str, views: Sequence[ReplicaView], num_empty: int = 0) -> float:
    """The cluster's load by `metric` over `views` plus `num_empty` empty replicas of the
    views' mean KV capacity."""
    pool = _Pool.of(views)
    if num_empty:
        pool = pool.resized(num_empty)
    return _LOADS[metric](pool)


def replica_load(metric: str, view: ReplicaView) -> float:
    """One replica's load by `metric` (its view alone)."""
    return _LOADS[metric](_Pool.of((view,)))


class Autoscaler:
    """Decides scale-ups and drains (module docstring); remembers only its last action's
    time, for the cooldowns."""

    __slots__ = ("_last_action_s", "config")

    def __init__(self, config: AutoscaleConfig) -> None:
        self.config = config
        self._last_action_s: float | None = None

    def decide(self, now_s: float, views: Sequence[ReplicaView],
               num_starting: int) -> ScaleDecision:
        """What to do at `now_s`, given the serving replicas' `views` and `num_starting`
        replicas provisioned but not yet serving."""
        cfg = self.config
        num_total = len(views) + num_starting
        if num_total < cfg.min_replicas:
            return self._act(now_s, ScaleDecision(num_add=cfg.min_replicas - num_total))
        if not views:
            return NO_CHANGE
        if num_total > cfg.max_replicas and not num_starting:
            excess = min(num_total - cfg.max_replicas, len(views) - 1)
            return self._act(now_s, ScaleDecision(drain_ids=self._least_loaded(views, excess)))
        up, down = cfg.loads
        if (pooled_load(cfg.metric, views, num_starting) > up and num_total < cfg.max_replicas
                and self._cooled(now_s, cfg.scale_up_cooldown_s)):
            return self._act(now_s, ScaleDecision(num_add=self._num_to_add(views, num_starting)))
        if (not num_starting and len(views) > cfg.min_replicas
                and self._cooled(now_s, cfg.scale_down_cooldown_s)):
            (drain_id,) = self._least_loaded(views, 1)
            without = next(v for v in views if v.replica_id == drain_id)
            pool = _Pool.of(views)
            pool = _Pool(pool.num_total_blocks - without.num_total_blocks,
                         pool.num_free_blocks - without.num_total_blocks,
                         pool.num_waiting_blocks, pool.num_requests, pool.num_replicas - 1)
            if _LOADS[cfg.metric](pool) < down:
                return self._act(now_s, ScaleDecision(drain_ids=(drain_id,)))
        return NO_CHANGE

    def _num_to_add(self, views: Sequence[ReplicaView], num_starting: int) -> int:
        """The fewest empty replicas that bring the load to scale_up_load (or the room left)."""
        cfg = self.config
        room = cfg.max_replicas - len(views) - num_starting
        for num_add in range(1, room):
            if pooled_load(cfg.metric, views, num_starting + num_add) <= cfg.loads[0]:
                return num_add
        return room

    def _least_loaded(self, views: Sequence[ReplicaView], count: int) -> tuple[int, ...]:
        metric = self.config.metric
        ranked = sorted(views, key=lambda v: (replica_load(metric, v), v.num_requests,
                                              -v.replica_id))
        return tuple(v.replica_id for v in ranked[:count])

    def _cooled(self, now_s: float, cooldown_s: float) -> bool:
        return self._last_action_s is None or now_s - self._last_action_s >= cooldown_s

    def _act(self, now_s: float, decision: ScaleDecision) -> ScaleDecision:
        self._last_action_s = now_s
        return decision
