"""What a router sees of its replicas: fresh views, or snapshots as a live router gets them.

A live router does not read replica state at the instant it routes: replicas report every
`interval_s`, and between reports the router sees the last one. What it can know for sure is
what it dispatched itself since then; with `counts_in_flight`, each view is the last report
plus the requests this router sent there since (one more waiting request, its prompt tokens
more waiting tokens), reconciled (dropped) at the next report.

Snapshots are taken at multiples of `interval_s` of virtual time (the cluster pushes a timer
there, skipping idle stretches where nothing could read them); interval 0 means fresh views.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from shunter.core.types import RequestSpec
from shunter.router.interface import ReplicaView
from shunter.sim.replica import SimReplica

__all__ = ["LazyViews", "ViewSource"]


class LazyViews(Sequence[ReplicaView]):
    """The replicas' snapshots at one instant, each taken only when a router first reads it.

    A router that looks at one replica (round robin, random) costs O(1) per request instead of
    O(replicas); one that scans them all sees exactly what a list would have held, since nothing
    changes between the arrival and its routing decision. A replica whose load has not
    changed since the last arrival hands back the view it gave then (`SimReplica.view`'s
    `reuse`): a router reads these views while it routes, and keeps none.
    """

    __slots__ = ("_replicas", "_views", "_with_speeds")

    def __init__(self, replicas: Sequence[SimReplica], *, with_speeds: bool = True) -> None:
        self._replicas = replicas
        self._with_speeds = with_speeds
        self._views: list[ReplicaView | None] = [None] * len(replicas)

    def __len__(self) -> int:
        return len(self._replicas)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._replicas)))]
        view = self._views[index]
        if view is None:
            view = self._views[index] = self._replicas[index].view(self._with_speeds, reuse=True)
        return view

    def __iter__(self) -> Iterator[ReplicaView]:
        views, replicas, with_speeds = self._views, self._replicas, self._with_speeds
        for i, view in enumerate(views):
            if view is None:
                view = views[i] = replicas[i].view(with_speeds, reuse=True)
            yield view


class ViewSource:
    """The views one router reads for a pool of replicas (fresh, or stale as above)."""

    __slots__ = ("_in_flight", "_snapshot", "counts_in_flight", "interval_s", "replicas",
                 "with_speeds")

    def __init__(self, replicas: Sequence[SimReplica], *, interval_s: float = 0.0,
                 counts_in_flight: bool = True, with_speeds: bool = True) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.replicas = list(replicas)
        self.interval_s = interval_s
        self.counts_in_flight = counts_in_flight
        self.with_speeds = with_speeds  # False: the router declared it never reads them
        self._snapshot: list[ReplicaView] | None = None
        # replica id -> (requests, prompt tokens) this router sent since the snapshot
        self._in_flight: dict[int, tuple[int, int]] = {}

    @property
    def is_stale(self) -> bool:
        return self.interval_s > 0

    def refresh(self) -> None:
        """Take the replicas' reports now (a stale source's periodic snapshot)."""
        self._snapshot = [r.view(self.with_speeds) for r in self.replicas]
        self._in_flight.clear()

    def views(self) -> Sequence[ReplicaView]:
        """What the router sees now."""
        if not self.is_stale:
            return LazyViews(self.replicas, with_speeds=self.with_speeds)
        if self._snapshot is None:
            self.refresh()
        assert self._snapshot is not None
        if not self._in_flight:
            return self._snapshot
        return [self._with_in_flight(v) for v in self._snapshot]

    def _with_in_flight(self, view: ReplicaView) -> ReplicaView:
        sent = self._in_flight.get(view.replica_id)
        if sent is None:
            return view
        num_requests, num_tokens = sent
        return replace(view, num_waiting=view.num_waiting + num_requests,
                       num_waiting_tokens=view.num_waiting_tokens + num_tokens)

    def dispatched(self, replica_id: int, spec: RequestSpec) -> None:
        """The router sent `spec` to `replica_id` (counted until the next snapshot)."""
        if self.is_stale and self.counts_in_flight:
            num_requests, num_tokens = self._in_flight.get(replica_id, (0, 0))
            self._in_flight[replica_id] = (num_requests + 1, num_tokens + spec.num_prompt_tokens)
