"""The live autoscaler (`gateway/autoscale.py`) does what the decision says: a new replica joins
the router's set once built, a drained one takes nothing new, finishes what it holds and goes,
a replica that fails to start is reported and nothing else changes; and the gateway config's
[autoscale] table is checked against its backends."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.gateway.factories import MODEL, asgi_client
from tests.gateway.virtual_time import run_virtual

from shunter.errors import ConfigError
from shunter.gateway.app import AppConfig
from shunter.gateway.autoscale import LiveAutoscaler
from shunter.gateway.breaker import BreakerConfig
from shunter.gateway.config import load_config
from shunter.gateway.factory import GatewayParts, build_app
from shunter.gateway.fake import FakeEngineClient
from shunter.gateway.replica import BackendSlot, Replica
from shunter.router.autoscale import ScaleDecision
from shunter.router.interface import ReplicaView

TOKEN_S = 0.01
PROVISION_S = 0.5


@dataclass
class Scripted:
    """A decision function that answers from a script and records what it was shown."""

    answers: list[ScaleDecision]
    config: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(interval_s=1.0))
    seen: list[tuple[list[int], int]] = field(default_factory=list)
    views: list[list[ReplicaView]] = field(default_factory=list)

    def decide(self, now_s: float, views: list[ReplicaView], num_starting: int) -> ScaleDecision:
        self.seen.append(([v.replica_id for v in views], num_starting))
        self.views.append(list(views))
        return self.answers.pop(0) if self.answers else ScaleDecision(num_add=0, drain_ids=())


def fake_slot(name: str) -> BackendSlot:
    return BackendSlot(name=name, client=FakeEngineClient(first_token_delay_s=TOKEN_S,
                                                          token_delay_s=TOKEN_S),
                       max_concurrency=4)


def scaled_app(script: Scripted, *, fails: bool = False):
    loop = asyncio.get_running_loop()
    app = build_app(GatewayParts(app=AppConfig(model_names=(MODEL,)), router="least_load",
                                 policy="fcfs"), [fake_slot("f")], clock=loop.time)

    async def make(index: int, replica_id: int) -> Replica:
        await asyncio.sleep(PROVISION_S)  # its cold start, in virtual seconds
        if fails:
            raise RuntimeError("no memory for another replica")
        return Replica.of_slot(fake_slot(f"f-{index}"), replica_id, BreakerConfig())

    scaler = LiveAutoscaler(app.pool, script, make, "f", app.metrics, loop.time,  # type: ignore[arg-type]
                            queue=app.admission.queue)
    scaler.start()  # (the ASGI test client runs no lifespan, which starts app.services)
    return app, scaler


async def complete(client, n: int = 20) -> None:
    r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "a b c",
                                                   "max_tokens": n, "ignore_eos": True})
    assert r.status_code == 200, r.text


def test_scale_up_then_drain_and_remove() -> None:
    """Decisions every second: at 1 s one replica more (ready at 1.5 s), at 3 s the replica
    holding a long request is drained (it ends at about 3.5 s), at 4 s it is removed."""
    script = Scripted([ScaleDecision(num_add=1, drain_ids=())])

    async def go() -> tuple[list, list, str, str]:
        loop = asyncio.get_running_loop()

        async def until(t: float) -> None:
            await asyncio.sleep(t - loop.time())

        app, scaler = scaled_app(script)
        async with asgi_client(app) as client:
            await until(1.25)
            assert [r.name for r in app.pool.replicas] == ["f"]
            assert scaler.num_by_state() == {"serving": 1, "starting": 1, "draining": 0}
            await until(1.75)
            assert [r.name for r in app.pool.replicas] == ["f", "f-1"]
            await asyncio.gather(*(complete(client) for _ in range(6)))
            assert app.metrics.routed.get(("f-1",)) > 0  # the new replica takes traffic
            await until(2.1)
            busy = asyncio.create_task(complete(client, 140))  # about 1.4 s long
            await until(2.2)
            held = next(r for r in app.pool.replicas if r.num_in_flight)
            script.answers.append(ScaleDecision(num_add=0, drain_ids=(held.replica_id,)))
            await until(3.1)
            assert held.is_draining and held in app.pool.replicas  # still finishing
            before = app.metrics.routed.get((held.name,))
            await asyncio.gather(*(complete(client) for _ in range(4)))
            assert app.metrics.routed.get((held.name,)) == before  # nothing new for it
            await busy
            assert held in app.pool.replicas
            await until(4.1)
            names = [r.name for r in app.pool.replicas]
            metrics = (await client.get("/metrics")).text
        await scaler.stop()
        return names, [(e.event, e.replica) for e in scaler.events], metrics, held.name

    names, events, metrics, drained = run_virtual(go())
    assert names == [n for n in ("f", "f-1") if n != drained]
    assert events == [("up", "f-1"), ("ready", "f-1"), ("down", drained), ("removed", drained)]
    for event in ("up", "ready", "down", "removed"):
        assert f'shunter_autoscale_events_total{{event="{event}"}} 1' in metrics
    assert 'shunter_autoscale_replicas{state="serving"} 1' in metrics
    # shown the serving replicas and how many start; never a draining one
    assert script.seen[:2] == [([0], 0), ([0, 1], 0)]
    assert len(script.seen[3][0]) == 1


def test_requests_queued_at_the_gateway_count_as_waiting_at_the_replicas() -> None:
    """Ten long requests on one replica of 4 slots: at the decision at 1 s, 4 are there and 6
    wait in the gateway's queue, which the decision sees as waiting at that replica (the
    simulator, without a gateway queue, would hold them there)."""
    script = Scripted([])

    async def go() -> tuple[ReplicaView, ReplicaView, list[int]]:
        loop = asyncio.get_running_loop()
        app, scaler = scaled_app(script)
        async with asgi_client(app) as client:
            tasks = [asyncio.create_task(complete(client, 300)) for _ in range(10)]  # ~3 s each
            await asyncio.sleep(1.1 - loop.time())
            queued = [r.num_prompt_tokens for r in app.admission.queue]
            own = app.pool.replicas[0].view(loop.time())  # what it holds itself, as at 1 s
            await asyncio.gather(*tasks)
        await scaler.stop()
        return script.views[0][0], own, queued

    seen, own, queued = run_virtual(go())
    assert len(queued) == 6 and own.num_requests == 4
    assert (seen.num_running, seen.num_waiting) == (own.num_running, own.num_waiting + 6)
    assert seen.num_waiting_tokens == own.num_waiting_tokens + sum(queued)
    assert sum(queued) > 0


def test_a_replica_that_fails_to_start_is_reported_and_changes_nothing() -> None:
    script = Scripted([ScaleDecision(num_add=1, drain_ids=())])

    async def go():
        app, scaler = scaled_app(script, fails=True)
        async with asgi_client(app) as client:
            await asyncio.sleep(1.0 + PROVISION_S + 0.1)
            await complete(client)
            metrics = (await client.get("/metrics")).text
        await scaler.stop()
        return [r.name for r in app.pool.replicas], [e.event for e in scaler.events], metrics

    names, events, metrics = run_virtual(go())
    assert names == ["f"] and events == ["up", "failed"]
    assert 'shunter_autoscale_events_total{event="failed"} 1' in metrics


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


ENGINE = '[[backends]]\nname = "e"\nkind = "fake"\nreplicas = 2\n'


def test_config_reads_the_autoscale_table(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ENGINE + "[autoscale]\nmin_replicas = 1\n"
                                                  "max_replicas = 4\n"))
    assert config.autoscale is not None and config.autoscale.backend == "e"
    assert (config.autoscale.config.min_replicas, config.autoscale.config.max_replicas) == (1, 4)


@pytest.mark.parametrize(("extra", "table", "message"), [
    ("", 'backend = "nope"\n', "backend 'nope' is not an engine, vllm or fake backend"),
    ('[[backends]]\nname = "r"\nurl = "http://127.0.0.1:9"\n', 'backend = "r"\n',
     "backend 'r' is not an engine"),
    ('[[backends]]\nname = "e2"\nkind = "fake"\n', "", "name the backend to scale"),
    ("", 'drain = "migrate"\n', 'drain = "migrate" is the simulator'),
    ("", "min_replicas = 3\nmax_replicas = 4\n", "starts with 2 replicas, outside"),
    ("", "max_replicas = 1\nmin_replicas = 1\n", "starts with 2 replicas, outside"),
    ("", "min_replicas = 3\nmax_replicas = 2\n", "min_replicas"),
    ("", "bogus = 1\n", "bogus"),
    ("", "provision_s = 5\n", "provision_s is the simulator's"),
    ("", 'backend = 3\n', "'backend' must be a string"),
])
def test_config_refuses_bad_autoscale_tables(tmp_path: Path, extra: str, table: str,
                                             message: str) -> None:
    with pytest.raises(ConfigError, match="autoscale") as caught:
        load_config(write(tmp_path, ENGINE + extra + "[autoscale]\n" + table))
    assert message in str(caught.value)


def test_queued_requests_with_no_replica_taking_requests_leave_the_views_alone() -> None:
    async def go() -> list:
        app, scaler = scaled_app(Scripted([]))
        await scaler.stop()
        (replica,) = app.pool.replicas
        replica.is_draining = True  # nothing takes requests; a queue remains
        scaler.queue = [SimpleNamespace(num_prompt_tokens=5)]  # type: ignore[list-item]
        return scaler.views(0.0, []) + scaler.views(0.0, [replica])

    views = run_virtual(go())
    assert len(views) == 1 and views[0].num_waiting == 0
