"""End-to-end runs of the real tools. Minutes each and heavy: opt in with SHUNTER_RUN_EXTERNAL=1
(``SHUNTER_RUN_EXTERNAL=1 .venv/bin/python -m pytest benchmarks/_external/tests -m external``).
The first run installs the tools into .bench/ (about 1.5 min for vLLM, 1 min for Vidur)."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path

import pytest
from benchmarks._external.vidur import PROFILING_DIR, run_vidur, vidur_requests
from benchmarks._external.vidur_workload import vidur_workload
from benchmarks._external.vllm_cpu import (
    ensure_smollm2_hf_dir,
    random_prompts,
    run_vllm_throughput,
    vllm_server,
)

pytestmark = [
    pytest.mark.external,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("SHUNTER_RUN_EXTERNAL") != "1",
                       reason="set SHUNTER_RUN_EXTERNAL=1 to install and run Vidur / vLLM"),
]


@pytest.mark.skipif(not PROFILING_DIR.exists(), reason="../shared/vidur-profiling is absent")
def test_vidur_small_run_matches_regenerated_workload(tmp_path: Path) -> None:
    result = run_vidur(num_requests=200, qps=5.0, seed=3, workdir=tmp_path)
    assert result["num_completed"] == 200
    assert 0 < result["ttft_p50_s"] <= result["ttft_p99_s"] < result["e2e_p99_s"]
    assert result["peak_rss_bytes"] > 50 * 2**20
    expected = vidur_workload(num_requests=200, qps=5.0, seed=3,
                              trace_file=PROFILING_DIR / "splitwise_conv.csv")
    assert vidur_requests(tmp_path) == expected


def test_vllm_throughput_generates_exactly_the_requested_tokens() -> None:
    result = run_vllm_throughput(model_dir=ensure_smollm2_hf_dir(), output_len=16,
                                 concurrency=2, prompts=random_prompts(num_prompts=4,
                                                                       prompt_len=32))
    assert result["num_output_tokens"] == 4 * 16  # ignore_eos: every request runs to max
    assert result["num_prompt_tokens"] == 4 * 32
    assert result["tokens_per_s"] == pytest.approx(64 / result["wall_s"])


def _post_json(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_vllm_server_answers_chat_and_always_stops() -> None:
    with vllm_server(ensure_smollm2_hf_dir(), served_model_name="smollm2") as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        reply = _post_json(f"{server.base_url}/v1/chat/completions", {
            "model": "smollm2", "temperature": 0, "max_tokens": 16,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert "Paris" in reply["choices"][0]["message"]["content"]
        with urllib.request.urlopen(f"{server.base_url}/metrics", timeout=30) as response:
            assert b"vllm:num_requests_running" in response.read()  # gateways read load here
        port, pid = server.port, server.pid
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
