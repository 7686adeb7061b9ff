"""The same engine on CUDA: paged attention over a device KV cache (skipped without a GPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from shunter.engine.config import EngineConfig  # noqa: E402
from shunter.engine.llm import LLMEngine  # noqa: E402
from shunter.engine.sampler import SamplingParams  # noqa: E402
from shunter.errors import ConfigError  # noqa: E402

PROMPTS = [[5, 6, 7], list(range(20, 47)), [100, 3, 9, 44, 71]]


def engine_on(device: str, loaded) -> LLMEngine:
    return LLMEngine(EngineConfig.of(model="tiny", device=device, dtype="float32", num_blocks=32,
                                  block_size=4, max_num_batched_tokens=8, num_host_blocks=8,
                                  preemption_mode="swap"), loaded=loaded)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_engine_matches_cpu(tiny_loaded) -> None:
    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    cpu = [c.token_ids for c in engine_on("cpu", tiny_loaded).generate(PROMPTS, greedy)]
    gpu_engine = engine_on("cuda", tiny_loaded)
    assert gpu_engine.executor.runner.kv.is_cuda
    assert [c.token_ids for c in gpu_engine.generate(PROMPTS, greedy)] == cpu
    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=3, max_tokens=12)
    a = engine_on("cpu", tiny_loaded).generate(PROMPTS, seeded)
    b = gpu_engine.generate(PROMPTS, seeded)
    assert all(len(x.token_ids) == len(y.token_ids) == 12 for x, y in zip(a, b, strict=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_gpu_is_a_config_error(tiny_loaded) -> None:
    with pytest.raises(ConfigError, match="CUDA"):
        engine_on("cuda", tiny_loaded)
