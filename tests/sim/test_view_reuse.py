"""A replica hands a router the view it handed out last while nothing it reports has changed
(`SimReplica.view(reuse=True)`, what `LazyViews` asks for): at every routing decision of
runs that move requests, preempt, pipeline, disaggregate and autoscale, each reused view
equals a freshly computed one, field by field."""

from __future__ import annotations

import dataclasses

import pytest
from tests.factories import make_spec, poisson_specs

from shunter.router.policies.least_load import LeastLoadRouter
from shunter.sim.config import SimConfig
from shunter.sim.runner import build_cluster, simulate
from shunter.sim.staleness import LazyViews, ViewSource

CONFIGS = {
    "least load": SimConfig(num_replicas=3),
    "cost router (reads speeds)": SimConfig(num_replicas=3, router="cost"),
    "memory pressure": SimConfig(num_replicas=2, num_blocks=300, scheduler={"max_model_len": 2048}),
    "llumnix migration, priority headroom": SimConfig(
        num_replicas=3, router="llumnix", num_blocks=400,
        migration={"interval_s": 0.2, "out_threshold": 10, "in_threshold": 10,
                   "high_priority": 0, "priority_headroom_blocks": 20}),
    "two pipeline stages": SimConfig(num_replicas=2, pp=2),
    "disaggregated": SimConfig(num_replicas=3, num_prefill_replicas=1, disaggregation=True,
                               kv_link_bytes_s=5e9),
    "autoscaled": SimConfig(num_replicas=1, autoscale={}),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_reused_view_equals_a_fresh_one(name, monkeypatch):
    views_of = ViewSource.views
    num_checked = [0]

    def checked_views(source: ViewSource):
        views = views_of(source)
        if isinstance(views, LazyViews):
            reused = [dataclasses.astuple(v) for v in views]  # every replica, each routing
            fresh = [dataclasses.astuple(r.view(source.with_speeds)) for r in source.replicas]
            assert reused == fresh
            num_checked[0] += 1
        return views

    monkeypatch.setattr(ViewSource, "views", checked_views)
    # least load read through views, not the index of replicas by its key (`sim.ranking`,
    # checked against fresh views in tests/sim/test_ranking.py)
    monkeypatch.setattr(LeastLoadRouter, "min_key", None)
    specs = [dataclasses.replace(s, priority=i % 2)
             for i, s in enumerate(poisson_specs(300, seed=5, rate=12.0))]
    run = simulate(CONFIGS[name], specs)
    assert len(run.records) == 300 and num_checked[0] >= 300


def test_each_call_that_changes_a_replica_renews_its_reused_view():
    """Driven by hand, not by a cluster (which starts a step after each of these calls and so
    would renew the view anyway): a queued request, a step begun or finished, a run cut short
    and a request moved out and in each show at once."""
    cluster = build_cluster(SimConfig(num_replicas=1))
    replica, clock = cluster.replicas[0], cluster.clock

    def same_as_fresh() -> None:
        reused = dataclasses.astuple(replica.view(False, reuse=True))
        assert reused == dataclasses.astuple(replica.view(False))

    same_as_fresh()
    replica.add(make_spec("a", num_prompt_tokens=100, num_output_tokens=50))
    same_as_fresh()  # one waiting
    end_s = replica.start_step()
    same_as_fresh()
    clock.advance_to(end_s)
    replica.finish_step()
    same_as_fresh()  # running, its first token out
    end_s = replica.start_step()  # a steady run to the end of "a"
    clock.advance_to(clock.now() + (end_s - clock.now()) / 2)
    same_as_fresh()  # half the run applied
    replica.add(make_spec("b", num_prompt_tokens=100, num_output_tokens=5))
    same_as_fresh()
    cut_s = replica.cut_run()
    assert cut_s is not None and cut_s < end_s
    same_as_fresh()
    clock.advance_to(cut_s)
    replica.finish_step()
    same_as_fresh()
    moved = replica.detach("a")
    same_as_fresh()
    assert replica.attach(moved)
    same_as_fresh()
    moved = replica.detach("a")
    same_as_fresh()
    replica.requeue(moved)  # its KV recomputed: it waits
    same_as_fresh()
    view = replica.view(False, reuse=True)
    assert (view.num_waiting, view.num_running) == (2, 0)  # "b", never started, and "a"
