"""`shunter serve --topology tetriinfer` serves SmolLM2-135M from a prefill and a decode
replica (the KV handed over between them): streamed and non-streamed greedy chat answers,
through the official `openai` client, equal one engine's, and /metrics counts the handoffs
(slow: the real server, started and stopped here)."""

from __future__ import annotations

import re
import urllib.request

import pytest
from tests.cli.test_serve_policies import serving

openai = pytest.importorskip("openai")
pytest.importorskip("torch")

MAX_TOKENS = 24
QUESTIONS = ["Say hello.",  # short; and one of ~700 tokens: prefilled in 512-token chunks
             "Summarize this list: " + ", ".join(f"item {i}" for i in range(220))]


def metric(url: str, name: str) -> float:
    """`name` summed over its labels, from /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m[1]) for m in re.finditer("^" + name + r"(?:\{[^}]*\})? (\S+)$", text,
                                                re.MULTILINE))


def one_engine_answers() -> list[tuple[str, str]]:
    """What one engine answers to the server's requests, in the server's order: each question
    whole, then streamed. The repeat hits the prefix cache, which computes the prompt's last
    tokens in a smaller batch; that rounds differently and can flip a near-tied greedy token
    ("Say hello." answers "Hello! I'm..." first and "Hello there, ..." after), in one engine
    as in the pools, so the reference has to see the same history."""
    import torch

    from shunter.engine import EngineConfig, LLMEngine, SamplingParams

    # one thread, as the server's engines (`serving` sets OMP_NUM_THREADS=1): a matmul split
    # over another number of threads sums in another order, which can flip a near tie too
    num_threads = torch.get_num_threads()
    try:
        engine = LLMEngine(EngineConfig.of(model="smollm2-135m", num_threads=1))
        assert engine.tokenizer is not None
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
        answers = []
        for question in QUESTIONS:
            prompt = engine.tokenizer.apply_chat_template([{"role": "user",
                                                            "content": question}])
            first, second = (engine.generate([prompt], params)[0].text for _ in range(2))
            answers.append((first, second))
        return answers
    finally:
        torch.set_num_threads(num_threads)


@pytest.mark.slow
def test_tetriinfer_pools_answer_as_one_engine_does() -> None:
    expected = one_engine_answers()
    with serving("--replicas", "2", "--topology", "tetriinfer") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", timeout=300, max_retries=0)
        for question, (answer, streamed_answer) in zip(QUESTIONS, expected, strict=True):
            messages = [{"role": "user", "content": question}]
            whole = client.chat.completions.create(model="smollm2-135m", messages=messages,
                                                   max_tokens=MAX_TOKENS, temperature=0)
            assert whole.choices[0].message.content == answer
            assert whole.usage.completion_tokens <= MAX_TOKENS
            assert whole.usage.prompt_tokens > (100 if len(question) > 100 else 5)
            stream = client.chat.completions.create(
                model="smollm2-135m", messages=messages, max_tokens=MAX_TOKENS, temperature=0,
                stream=True, stream_options={"include_usage": True})
            pieces, usage = [], None
            for chunk in stream:
                pieces += [c.delta.content or "" for c in chunk.choices]
                usage = chunk.usage or usage
            assert "".join(pieces) == streamed_answer
            assert usage is not None and usage.prompt_tokens == whole.usage.prompt_tokens
            assert 0 < usage.completion_tokens <= MAX_TOKENS  # (the answers may differ)
        num_handoffs = metric(url, "shunter_kv_handoffs_total")
        assert num_handoffs >= 2 * len(QUESTIONS) - 1  # (an answer of one token never moves)
        print(f"{num_handoffs:g} handoffs, mean "
              f"{metric(url, 'shunter_kv_handoff_seconds_sum') / num_handoffs * 1e3:.2f} ms")
