"""One vLLM-CPU server (SmolLM2-135M, fp32) for every external gateway test of a run: starting
one takes about a minute on two cores, so the tests share it. Started on first use, stopped at
the end of the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

VLLM_MODEL = "smollm2"
# tool calls for the real-client tests; no prefix cache, so that every request computes its
# prompt afresh and answers match a fresh server's whatever ran before
VLLM_ARGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes",
             "--no-enable-prefix-caching")


@pytest.fixture(scope="session")
def vllm() -> Iterator[object]:
    vllm_cpu = pytest.importorskip("benchmarks._external.vllm_cpu")
    model_dir = vllm_cpu.ensure_smollm2_hf_dir()
    with vllm_cpu.vllm_server(model_dir, served_model_name=VLLM_MODEL, max_model_len=1024,
                              extra_args=VLLM_ARGS) as server:
        yield server
