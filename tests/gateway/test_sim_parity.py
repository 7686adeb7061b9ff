"""Parity of the gateway tier: the live gateway (fake backends, on virtual time) and the
simulator's gateway tier, given the same workload and the same policy, dispatch the requests
in the same order, for every policy that can run at the gateway.

The fake backends take exactly STEP_S per token (the first included); the simulated replicas
take STEP_S per step (a profile cost model with only a fixed term), so with one request in
flight per replica a request takes O x STEP_S in both. Prompts are three-letter words, so the
gateway's token estimate (4 characters a token) and the fake's word count agree, and the
simulated requests carry the prompts' text hashes as the live gateway computes them.
"""

from __future__ import annotations

import asyncio
import random
import string
from dataclasses import dataclass

import pytest
from tests.gateway.factories import MODEL, asgi_client
from tests.gateway.virtual_time import run_virtual

from shunter.core.predict.learned import LearnedPredictor
from shunter.core.sched.gateway_queue import GatewayQueue
from shunter.core.sched.registry import POLICIES, make_policy
from shunter.core.types import RequestSpec
from shunter.gateway.app import AppConfig
from shunter.gateway.factory import GatewayParts, build_app
from shunter.gateway.fake import FakeEngineClient
from shunter.gateway.replica import BackendSlot, estimate_tokens, text_hash_ids
from shunter.gateway.tenant import TenantConfig
from shunter.metrics.record import RequestRecord
from shunter.sim.config import SimConfig
from shunter.sim.cost.profile import StepProfile, save_profile
from shunter.sim.runner import simulate

STEP_S = 0.0137
NUM_REPLICAS = 2
TENANTS = ("a", "b", "c")
PREDICTOR_WEIGHTS = {"bias": 0.5, "log_prompt": 0.9, "turn": 0.4}
PARAMS = {"dlpm": {"quantum": 300.0}, "plas": {"first_level_service": 120.0, "aging_s": 4.0},
          "vtc": {"tenant_weights": {"c": 2.0}}, "priority": {"aging_s": 1.5}}
GATEWAY_POLICIES = sorted(n for n in POLICIES if make_policy(n).requires_engine is None)


@dataclass(frozen=True)
class Job:
    request_id: str
    arrival_s: float
    text: str
    num_output_tokens: int
    tenant: str
    priority: int
    program_id: str
    session_id: str


def workload(seed: int = 7, n: int = 36) -> list[Job]:
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=3)) for _ in range(400)]
    system_prompts = [" ".join(rng.choices(words, k=40)) for _ in range(2)]
    jobs, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(9.0)  # about 1.5x what two one-slot replicas serve
        tail = " ".join(rng.choices(words, k=rng.randint(1, 60)))
        text = f"{system_prompts[i % 2]} {tail}" if i % 3 else tail
        jobs.append(Job(f"q{i:02d}", t, text, rng.randint(3, 30), TENANTS[i % 3 if i % 4 else 0],
                        rng.choice([0, 0, 1]), f"prog{i % 5}", f"sess{i % 6}"))
    return jobs


@pytest.fixture
def dispatches(monkeypatch):
    """Every request id the gateway tier's queue hands out, in order (either runtime)."""
    order: list[str] = []
    original = GatewayQueue.pop

    def pop(self, now_s):
        request = original(self, now_s)
        order.append(request.request_id)
        return request
    monkeypatch.setattr(GatewayQueue, "pop", pop)
    return order


def live_dispatch_order(policy: str, jobs: list[Job], order: list[str]) -> list[str]:
    order.clear()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        tenants = tuple(TenantConfig(name=t, api_keys=(f"key-{t}",)) for t in TENANTS)
        fakes = [FakeEngineClient(first_token_delay_s=STEP_S, token_delay_s=STEP_S)
                 for _ in range(NUM_REPLICAS)]
        parts = GatewayParts(
            app=AppConfig(model_names=(MODEL,)), router="round_robin", policy=policy,
            policy_params=PARAMS.get(policy, {}), tenants=tenants,
            predictor=LearnedPredictor(weights=PREDICTOR_WEIGHTS))
        app = build_app(parts, [BackendSlot(name=f"r{i}", client=f, max_concurrency=1)
                                for i, f in enumerate(fakes)], clock=loop.time)

        async def send(client, job: Job) -> None:
            await asyncio.sleep(job.arrival_s)
            r = await client.post("/v1/completions", headers={
                "authorization": f"Bearer key-{job.tenant}"},
                json={"model": MODEL, "prompt": job.text, "max_tokens": job.num_output_tokens,
                      "ignore_eos": True, "priority": job.priority, "stream": True,
                      "program_id": job.program_id, "session_id": job.session_id})
            assert r.status_code == 200, r.text

        async with asgi_client(app) as client:
            await asyncio.gather(*(send(client, job) for job in jobs))
        assert app.admission.num_active == 0 and app.admission.num_queued == 0

    run_virtual(go())
    # the gateway names requests itself: "cmpl-" + 8 hex digits + a counter in arrival order
    return [jobs[int(rid[len("cmpl-") + 8:], 16)].request_id for rid in order]


def sim_dispatch_order(policy: str, jobs: list[Job], order: list[str], profile: str) -> list[str]:
    order.clear()
    specs = [RequestSpec(request_id=j.request_id, arrival_s=j.arrival_s,
                         num_prompt_tokens=estimate_tokens(len(j.text)),
                         num_output_tokens=j.num_output_tokens,
                         max_output_tokens=j.num_output_tokens, tenant=j.tenant,
                         priority=j.priority, session_id=j.session_id, program_id=j.program_id,
                         hash_ids=text_hash_ids(j.text)) for j in jobs]
    config = SimConfig(model="smollm2-135m", cost_model="profile", gpu=profile,
                       num_replicas=NUM_REPLICAS, router="round_robin", gateway_policy=policy,
                       gateway_params=PARAMS.get(policy, {}), gateway_max_inflight=1,
                       predictor="learned", predictor_params={"weights": PREDICTOR_WEIGHTS})
    run = simulate(config, specs)
    assert len(run.records) == len(specs)
    return list(order)


@pytest.fixture(scope="module")
def fixed_step_profile(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("profile") / "fixed.json"
    save_profile(StepProfile(model="smollm2-135m", source="fake", knots_tokens=(1,),
                             slopes_s_per_token=(0.0,), fixed_s=STEP_S, s_per_prefill_chunk=0.0,
                             s_per_prefill_pair=0.0, s_per_decode_kv_token=0.0,
                             max_model_len=8192, kv_bytes_per_token=1024,
                             kv_capacity_tokens=1 << 20), path)
    return str(path)


@pytest.mark.parametrize("policy", GATEWAY_POLICIES)
def test_live_gateway_and_simulated_gateway_tier_dispatch_in_the_same_order(
        policy, dispatches, fixed_step_profile):
    jobs = workload()
    assert all(len(j.text.split()) == estimate_tokens(len(j.text)) for j in jobs)
    live = live_dispatch_order(policy, jobs, dispatches)
    simulated = sim_dispatch_order(policy, jobs, dispatches, fixed_step_profile)
    assert len(live) == len(simulated) == len(jobs)
    assert live == simulated
    # the queue really reordered (read_me: FCFS without expert profiles, which live requests lack)
    assert live != sorted(live) or policy in ("fcfs", "read_me")


def flood_jobs(seed: int = 3) -> list[Job]:
    """Two tenants past saturation: `heavy` sends 5x `light`'s rate."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=3)) for _ in range(200)]
    jobs = []
    for tenant, rate in (("a", 20.0), ("b", 4.0)):
        t = 0.0
        for i in range(int(8 * rate)):
            t += rng.expovariate(rate)
            jobs.append(Job(f"{tenant}{i:03d}", t, " ".join(rng.choices(words, k=20)),
                            rng.randint(10, 20), tenant, 0, f"{tenant}{i}", f"{tenant}{i}"))
    return sorted(jobs, key=lambda j: j.arrival_s)


def test_the_light_tenant_is_served_several_times_sooner_under_vtc(dispatches,
                                                                   fixed_step_profile):
    """The two-tenant flood through the gateway, fcfs vs vtc: the light tenant's requests
    start several times sooner under vtc, live, and the simulator predicts each one's TTFT."""
    jobs = flood_jobs()
    ttft = {}
    for policy in ("fcfs", "vtc"):
        live = {r.request_id: r.ttft_s for r in live_records(policy, jobs)}
        simulated = {r.request_id: r.ttft_s for r in sim_records(policy, jobs, fixed_step_profile)}
        assert len(live) == len(simulated) == len(jobs)
        assert all(live[k] == pytest.approx(simulated[k], abs=1e-9) for k in live)
        light = [live[j.request_id] for j in jobs if j.tenant == "b"]
        ttft[policy] = sum(light) / len(light)
    assert ttft["fcfs"] > 10 * ttft["vtc"], ttft


class _TimedFake(FakeEngineClient):
    """A fake backend that notes when each request's first token leaves it (an in-process
    ASGI client reads a streamed response only once it is complete)."""

    def __init__(self, first_token_s: dict[str, float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.first_token_s = first_token_s

    def submit(self, request):
        chunks = super().submit(request)

        async def timed():
            async for chunk in chunks:
                self.first_token_s.setdefault(request.request_id,
                                              asyncio.get_running_loop().time())
                yield chunk
        return timed()


def live_records(policy: str, jobs: list[Job]) -> list[RequestRecord]:
    """The live gateway's requests: arrival and first token, per tenant."""
    first_token_s: dict[str, float] = {}

    async def go() -> None:
        loop = asyncio.get_running_loop()
        tenants = tuple(TenantConfig(name=t, api_keys=(f"key-{t}",)) for t in TENANTS)
        fakes = [_TimedFake(first_token_s, first_token_delay_s=STEP_S, token_delay_s=STEP_S)
                 for _ in range(NUM_REPLICAS)]
        parts = GatewayParts(app=AppConfig(model_names=(MODEL,)), router="round_robin",
                             policy=policy, tenants=tenants)
        app = build_app(parts, [BackendSlot(name=f"r{i}", client=f, max_concurrency=1)
                                for i, f in enumerate(fakes)], clock=loop.time)

        async def send(client, job: Job) -> None:
            await asyncio.sleep(job.arrival_s)
            r = await client.post("/v1/completions", headers={
                "authorization": f"Bearer key-{job.tenant}"}, json={
                "model": MODEL, "prompt": job.text, "max_tokens": job.num_output_tokens,
                "ignore_eos": True, "stream": True})
            assert r.status_code == 200

        async with asgi_client(app) as client:
            await asyncio.gather(*(send(client, job) for job in jobs))

    run_virtual(go())
    records = []
    for rid, first_s in first_token_s.items():  # "cmpl-" + 8 hex digits + arrival counter
        job = jobs[int(rid[len("cmpl-") + 8:], 16)]
        records.append(RequestRecord(request_id=job.request_id, arrival_s=job.arrival_s,
                                     num_prompt_tokens=1, tenant=job.tenant,
                                     token_times_s=[first_s]))
    return records


def sim_records(policy: str, jobs: list[Job], profile: str):
    specs = [RequestSpec(request_id=j.request_id, arrival_s=j.arrival_s,
                         num_prompt_tokens=estimate_tokens(len(j.text)),
                         num_output_tokens=j.num_output_tokens, tenant=j.tenant) for j in jobs]
    config = SimConfig(model="smollm2-135m", cost_model="profile", gpu=profile,
                       num_replicas=NUM_REPLICAS, router="round_robin", gateway_policy=policy,
                       gateway_max_inflight=1)
    return simulate(config, specs).records
