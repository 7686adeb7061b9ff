"""The Intelligent Router: its choices on crafted snapshots, its model file, `shunter
train-router`, and the router in the simulator and the live gateway."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tests.factories import make_spec, poisson_specs

from shunter.cli import main
from shunter.cli.train_router import fit_length_model
from shunter.router.interface import ReplicaView
from shunter.router.policies.intelligent import IntelligentRouter
from shunter.router.policies.intelligent_model import (
    FEATURE_NAMES,
    FORMAT_VERSION,
    LengthModel,
    RouterModel,
    load_model,
    save_model,
)
from shunter.router.registry import make_router
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate

PROMPT_ECHO = LengthModel((0.0, 1.0, 0.0, 0.0, 0.0, 0.0))  # predicts output = prompt tokens


def view(replica_id: int, **fields: object) -> ReplicaView:
    fields.setdefault("num_total_blocks", 10_000)
    fields.setdefault("num_free_blocks", 10_000)
    return ReplicaView(replica_id=replica_id, **fields)  # type: ignore[arg-type]


def write_model(path: Path, **fields: object) -> Path:
    model = RouterModel(length=PROMPT_ECHO, log_weights=(0.5,) + (0.0,) * (len(FEATURE_NAMES) - 1),
                        model="llama-3.1-8b", gpu="a100-80gb", num_replicas=2)
    data = json.loads(save_model(model, path).read_text())
    data.update(fields)
    path.write_text(json.dumps(data))
    return path


def test_prefers_the_instance_whose_requests_have_less_predicted_work_left():
    router = IntelligentRouter(router_model=RouterModel(length=PROMPT_ECHO),
                               randomize_ties=False)
    idle = [view(0), view(1)]
    assert router.route(make_spec("long", num_prompt_tokens=2000), idle).replica_id == 0
    after_long = [view(0, num_waiting=1, num_waiting_tokens=2000), view(1)]
    assert router.route(make_spec("short", num_prompt_tokens=10), after_long).replica_id == 1
    # both now run one request, alike in every count; only the book tells them apart
    busy = [view(0, num_running=1, num_running_tokens=2000),
            view(1, num_running=1, num_running_tokens=2000)]
    assert router.route(make_spec("next", num_prompt_tokens=500), busy).replica_id == 1


def test_keeps_prefill_heavy_requests_off_decode_heavy_instances_and_vice_versa():
    views = [view(0, num_running=5, num_running_tokens=5000),  # decode-heavy
             view(1, num_waiting=2, num_waiting_tokens=20_000)]  # prefill-heavy
    router = IntelligentRouter(expected_output_tokens=1000, randomize_ties=False)
    prefill_heavy = make_spec("p", num_prompt_tokens=8000, max_output_tokens=10)
    decode_heavy = make_spec("d", num_prompt_tokens=10)
    assert router.route(prefill_heavy, views).replica_id == 1
    assert router.route(decode_heavy, views).replica_id == 0
    # without the mixing terms the prefill-heavy request would join the decodes
    no_mixing = IntelligentRouter(router_model=RouterModel(
        length=LengthModel.constant(1000), log_weights=(0.0,) * 4 + (-9.0, -9.0, 0.0)),
        mode="rl", randomize_ties=False)
    assert no_mixing.route(prefill_heavy, views).replica_id == 0


def test_books_age_with_time_and_follow_the_snapshot_counts():
    router = IntelligentRouter(router_model=RouterModel(length=PROMPT_ECHO),
                               randomize_ties=False)
    router.route(make_spec("a", num_prompt_tokens=1000), [view(0)])
    one = view(0, num_running=1, decode_step_s=0.01, prefill_tokens_per_s=10_000.0)
    [early] = [router.features(make_spec("x", num_prompt_tokens=5000), one, 5000.0, 0.5)]
    [late] = [router.features(make_spec("x", num_prompt_tokens=5000), one, 5000.0, 8.0)]
    assert late[FEATURE_NAMES.index("mix_decode_s")] < early[FEATURE_NAMES.index("mix_decode_s")]
    router.features(make_spec("x"), view(0), 10.0, 8.0)  # the snapshot says it finished
    assert router._books[0] == []


def test_model_file_round_trip_and_rl_weights(tmp_path):
    model = RouterModel(length=LengthModel((1.0, 0.5, 0.0, 0.1, 0.0, 0.2), 1.3),
                        log_weights=tuple(0.1 * i for i in range(len(FEATURE_NAMES))),
                        model="llama-3.1-8b", gpu="a100-80gb", num_replicas=4, info={"k": 1})
    path = save_model(model, tmp_path / "m.json")
    assert load_model(path) == model
    router = make_router("intelligent", mode="rl", model_path=str(path), llm="llama-3.1-8b",
                         num_replicas=4)
    assert router.weights == pytest.approx(model.weights)
    heuristic = make_router("intelligent", model_path=str(path))
    assert heuristic.weights == (1.0,) * len(FEATURE_NAMES)
    assert heuristic.length_model == model.length


@pytest.mark.parametrize("change, message", [
    ({"format": "other"}, "is not an intelligent router model"),
    ({"version": FORMAT_VERSION + 1}, f"format version {FORMAT_VERSION + 1}"),
    ({"policy": {"features": ["x"], "log_weights": [0.0]}}, "damaged"),
    ({"length": {"features": [], "weights": [], "smear": 1.0}}, "damaged"),
])
def test_bad_model_files_name_the_file_and_the_problem(tmp_path, change, message):
    path = write_model(tmp_path / "bad.json", **change)
    with pytest.raises(ValueError, match=message) as info:
        make_router("intelligent", mode="rl", model_path=str(path))
    assert str(path) in str(info.value)


def test_missing_unreadable_and_mismatched_files(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(ValueError, match=f"cannot read intelligent router model {missing}"):
        make_router("intelligent", mode="rl", model_path=str(missing))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        make_router("intelligent", mode="rl", model_path=str(garbage))
    good = write_model(tmp_path / "good.json")
    with pytest.raises(ValueError, match="trained for model 'llama-3.1-8b', not 'qwen'"):
        make_router("intelligent", mode="rl", model_path=str(good), llm="qwen")
    with pytest.raises(ValueError, match="trained for 2 replicas, not 8"):
        make_router("intelligent", mode="rl", model_path=str(good), num_replicas=8)
    router = make_router("intelligent", mode="rl", model_path=str(good))
    with pytest.raises(ValueError, match="trained for 2 replicas; it was offered 3"):
        router.route(make_spec(), [view(0), view(1), view(2)])
    with pytest.raises(ValueError, match="mode 'rl' needs model_path"):
        make_router("intelligent", mode="rl")
    with pytest.raises(ValueError, match="unknown mode 'dqn'; valid: heuristic, rl"):
        make_router("intelligent", mode="dqn")


def test_length_model_learns_a_prompt_dependent_length():
    rng = random.Random(0)
    specs = [make_spec(f"r{i}", num_prompt_tokens=p, num_output_tokens=max(1, p // 4))
             for i, p in enumerate(rng.randint(10, 4000) for _ in range(300))]
    model = fit_length_model(specs)
    short = model.predict((1.0, 4.6, 4.6 ** 2, 0.0, 0.0, 0.0))  # ~100-token prompt
    long = model.predict((1.0, 8.0, 64.0, 0.0, 0.0, 0.0))  # ~3000-token prompt
    assert long > 10 * short


def test_runs_in_the_simulator_and_repeats_itself():
    specs = poisson_specs(150, seed=3, rate=40.0)
    config = SimConfig(router="intelligent", num_replicas=3, router_params={"seed": 1})
    first = simulate(config, specs)
    assert len(first.records) == 150
    again = simulate(config, specs)
    assert [r.finish_s for r in first.records] == [r.finish_s for r in again.records]


def write_trace(tmp_path: Path, n: int = 240) -> Path:
    rng = random.Random(1)
    lines = [json.dumps({"timestamp": i * 40, "input_length": p,
                         "output_length": max(1, p // 5 + rng.randint(0, 20))})
             for i, p in enumerate(rng.choice([50, 400, 3000]) for _ in range(n))]
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_router_writes_a_model_the_simulator_loads(tmp_path, capsys):
    out = tmp_path / "router.json"
    rc = main(["train-router", str(write_trace(tmp_path)), "--replicas", "2", "--window", "40",
               "--iterations", "1", "--pairs", "1", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "iteration 1/1" in printed and "held out" in printed and f"wrote {out}" in printed
    model = load_model(out, model="llama-3.1-8b", num_replicas=2)
    assert model.info["kept"] in ("learned", "heuristic")
    config = SimConfig(router="intelligent", num_replicas=2,
                       router_params={"mode": "rl", "model_path": str(out)})
    assert len(simulate(config, poisson_specs(50, seed=0, rate=20.0)).records) == 50


def test_train_router_help_and_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train-router", "--help"])
    assert "evolution strategies" in capsys.readouterr().out
    rc = main(["train-router", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "m.json")])
    assert rc == 2
    rc = main(["train-router", str(write_trace(tmp_path)), "--speedup", "nan", "--quiet",
               "--out", str(tmp_path / "m.json")])
    assert rc == 2 and "--speedup must be a finite number" in capsys.readouterr().err


def test_serves_live_in_the_gateway(tmp_path):
    pytest.importorskip("httpx")
    from tests.gateway.factories import MODEL, asgi_client, run

    from shunter.gateway.admission import AdmissionConfig
    from shunter.gateway.app import AppConfig
    from shunter.gateway.factory import BackendSlot, GatewayParts, build_app
    from shunter.gateway.fake import FakeEngineClient

    fakes = [FakeEngineClient() for _ in range(2)]
    parts = GatewayParts(app=AppConfig(model_names=(MODEL,)), router="intelligent",
                         router_params={"mode": "rl",
                                        "model_path": str(write_model(tmp_path / "m.json"))},
                         admission=AdmissionConfig())
    app = build_app(parts, [BackendSlot(name=f"r{i}", client=f, max_concurrency=8)
                            for i, f in enumerate(fakes)])

    async def go():
        async with asgi_client(app) as c:
            return [await c.post("/v1/completions", json={"model": MODEL, "prompt": f"p{i}"})
                    for i in range(4)]
    assert all(r.status_code == 200 for r in run(go()))
    assert sum(f.num_submitted for f in fakes) == 4
