"""TetriInfer's pools live, gateway side: the config keys and what is refused, the decode pool
routing exactly as the simulator's tetriinfer router does on the same views, and its metrics."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from shunter.backend.protocol import BackendLoad
from shunter.core.types import RequestSpec
from shunter.errors import ConfigError
from shunter.gateway.config import load_config
from shunter.gateway.disagg import TETRIINFER_CHUNK_TOKENS, DecodePool, num_prefill_replicas
from shunter.gateway.metrics import GatewayMetrics
from shunter.router.policies.tetriinfer import TetriInferRouter
from shunter.sim.config import TETRIINFER_CHUNK_TOKENS as SIM_CHUNK_TOKENS

GOOD = """
[[backends]]
name = "engine"
kind = "engine"
replicas = 3
topology = "tetriinfer"
"""


def config(tmp_path: Path, text: str):
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return load_config(path)


def test_a_split_engine_backend_is_read_with_the_simulators_defaults(tmp_path: Path) -> None:
    [backend] = config(tmp_path, GOOD).backends
    assert backend.topology == "tetriinfer" and num_prefill_replicas(backend) == 2  # half, up
    assert TETRIINFER_CHUNK_TOKENS == SIM_CHUNK_TOKENS  # the same prefill chunk as simulated
    [backend] = config(tmp_path, GOOD + 'num_prefill_replicas = 1\ndecode_router = "least_load"'
                       '\n').backends
    assert num_prefill_replicas(backend) == 1 and backend.decode_router == "least_load"


@pytest.mark.parametrize(("extra", "named"), [
    ('[[backends]]\nname = "r"\nurl = "http://x"\ntopology = "tetriinfer"\nreplicas = 2\n',
     'topology needs kind = "engine"'),
    ('[[backends]]\nname = "e"\nkind = "engine"\ntopology = "tetriinfer"\n', "replicas >= 2"),
    ('[[backends]]\nname = "e"\nkind = "engine"\nreplicas = 2\ntopology = "tetriinfer"\n'
     'num_prefill_replicas = 2\n', "num_prefill_replicas = 2"),
    ('[[backends]]\nname = "e"\nkind = "engine"\nreplicas = 2\nnum_prefill_replicas = 1\n',
     "num_prefill_replicas only apply with topology"),
    ('[[backends]]\nname = "e"\nkind = "engine"\nreplicas = 2\ntopology = "splitwise"\n',
     "unknown topology 'splitwise'"),
    ('[[backends]]\nname = "e"\nkind = "engine"\nreplicas = 2\ntopology = "tetriinfer"\n'
     'decode_router = "nope"\n', "decode_router: unknown router"),
    ('[[backends]]\nname = "e"\nkind = "engine"\nreplicas = 2\ntopology = "tetriinfer"\n'
     'decode_router_params = {predictor = "oracle"}\n', "oracle"),
    ('[[backends]]\nname = "e"\nkind = "engine"\nreplicas = 2\ntopology = "tetriinfer"\n'
     'exact_prefix = true\n', "exact_prefix are not supported with topology"),
    ('[[backends]]\nname = "e"\nkind = "engine"\nreplicas = 2\ntopolgy = "tetriinfer"\n',
     "unknown key(s) topolgy"),
    (GOOD + "[autoscale]\nmin_replicas = 1\nmax_replicas = 4\n", "not autoscaled"),
])
def test_what_cannot_be_honoured_is_refused_naming_the_key(tmp_path: Path, extra: str,
                                                           named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        config(tmp_path, extra)


class LoadOnly:
    """A decode replica as the pool reads it: its reported load."""

    def __init__(self, load: BackendLoad) -> None:
        self.report = load
        self.is_closed = False

    async def load(self) -> BackendLoad:
        return self.report

    async def close(self) -> None:
        self.is_closed = True


def spec(i: int, num_prompt_tokens: int, tenant: str) -> RequestSpec:
    return RequestSpec(request_id=f"r{i}", arrival_s=0.0, num_prompt_tokens=num_prompt_tokens,
                       num_output_tokens=1, max_output_tokens=None, tenant=tenant)


def test_the_decode_router_chooses_what_the_simulators_router_does_on_the_same_views() -> None:
    table = {"*/*": 0, "long/*": 4, "long/9": 5}  # "long" tenants: predicted heavy decodes
    params = {"table": table, "num_choices": 2, "seed": 3}
    loads = [BackendLoad(num_running=n, num_free_blocks=100 - 10 * n, num_total_blocks=100)
             for n in (0, 3, 1, 2)]
    clients = [LoadOnly(load) for load in loads]
    now = [0.0]
    pool = DecodePool.of("e", clients, "tetriinfer", params, max_num_seqs=8, block_size=16)
    pool.clock = lambda: now[0]
    simulated = TetriInferRouter(**params)  # the simulator's decode router, fed the same views

    async def main() -> tuple[list[int], list[int]]:
        chosen, expected = [], []
        for i in range(24):
            now[0] = 0.25 * i
            s = spec(i, 100 + 37 * i, "long" if i % 3 else "chat")
            await pool.refresh()
            views = [r.view(now[0]) for r in pool.replicas]
            expected.append(simulated.route(replace(s, arrival_s=now[0]), views).replica_id)
            chosen.append(await pool.choose(s))
            if i % 4 == 3:
                pool.on_handoff(f"r{i - 2}", 0.01)
                pool.on_done(f"r{i - 3}", is_failed=False)
        return chosen, expected

    chosen, expected = asyncio.run(main())
    assert chosen == expected
    assert len(set(chosen)) > 1  # it spreads heavy decodes: a test that can fail


def test_handoffs_are_counted_and_timed_in_metrics() -> None:
    clients = [LoadOnly(BackendLoad(num_free_blocks=10, num_total_blocks=10)) for _ in range(2)]
    pool = DecodePool.of("e", clients, None, None)
    metrics = GatewayMetrics()
    pool.bind(metrics)

    async def main() -> None:
        index = await pool.choose(spec(0, 40, "default"))
        assert pool.replicas[index].num_in_flight == 1
        pool.on_handoff("r0", 0.003)
        pool.on_done("r0", is_failed=False)
        await pool.choose(spec(1, 40, "default"))
        pool.on_done("r1", is_failed=True)  # failed before its handoff
        assert all(r.num_in_flight == 0 for r in pool.replicas)
        await pool.stop()

    asyncio.run(main())
    text = metrics.render().decode()
    assert 'shunter_kv_handoffs_total{decode_replica="e-decode-' in text
    assert "shunter_kv_handoff_seconds_count" in text
    assert "shunter_kv_handoff_failures_total" in text
    assert "shunter_decode_replica_in_flight" in text
    assert all(c.is_closed for c in clients)
