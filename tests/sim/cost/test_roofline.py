from __future__ import annotations

import random
import time
from dataclasses import replace

import pytest

from shunter.core.types import StepShape
from shunter.errors import ConfigError
from shunter.sim.cost.catalog import get_gpu
from shunter.sim.cost.roofline import STEP_CPU_OVERHEAD_S, RooflineCostModel


def decode(num_requests: int, context_tokens: int) -> StepShape:
    return StepShape(num_decode_requests=num_requests,
                     num_decode_context_tokens=num_requests * context_tokens)


def prefill(*chunks: tuple[int, int]) -> StepShape:
    return StepShape(prefill_chunks=tuple(chunks))


@pytest.fixture(scope="module")
def cm() -> RooflineCostModel:
    return RooflineCostModel("llama-3.1-8b", "h100")


def random_shape(rng: random.Random) -> StepShape:
    chunks = tuple((rng.randint(1, 2048), rng.randint(0, 8192)) for _ in range(rng.randint(0, 3)))
    num_decodes = rng.randint(0, 256)
    return StepShape(prefill_chunks=chunks, num_decode_requests=num_decodes,
                     num_decode_context_tokens=num_decodes * rng.randint(1, 4096))


def test_more_tokens_is_never_faster(cm: RooflineCostModel) -> None:
    rng = random.Random(7)
    for _ in range(500):
        shape = random_shape(rng)
        more_decodes = StepShape(prefill_chunks=shape.prefill_chunks,
                                 num_decode_requests=shape.num_decode_requests + 1,
                                 num_decode_context_tokens=shape.num_decode_context_tokens + 100)
        more_prefill = StepShape(prefill_chunks=shape.prefill_chunks + ((rng.randint(1, 512), 0),),
                                 num_decode_requests=shape.num_decode_requests,
                                 num_decode_context_tokens=shape.num_decode_context_tokens)
        base = cm.step_time_s(shape)
        assert cm.step_time_s(more_decodes) >= base
        assert cm.step_time_s(more_prefill) >= base
    sizes = [1, 2, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    times = [cm.step_time_s(prefill((n, 0))) for n in sizes]
    assert times == sorted(times)


def test_decode_time_grows_with_context(cm: RooflineCostModel) -> None:
    times = [cm.step_time_s(decode(64, ctx)) for ctx in (128, 1024, 8192, 32768, 131072)]
    assert all(a < b for a, b in zip(times, times[1:], strict=False))
    assert cm.step_time_s(prefill((512, 16384))) > cm.step_time_s(prefill((512, 0)))


def test_decode_is_memory_bound_so_batching_is_nearly_free(cm: RooflineCostModel) -> None:
    one, many = cm.step_time_s(decode(1, 512)), cm.step_time_s(decode(32, 512))
    assert many < 1.3 * one  # 32x the tokens for < 30% more time
    assert cm.step_time_s(prefill((4096, 0))) > 5 * cm.step_time_s(decode(1, 512))  # compute-bound


def test_tp2_decode_faster_than_tp1_for_70b() -> None:
    # 70B fits no single catalog GPU, so give the H200 room; memory size does not change timing.
    roomy = replace(get_gpu("h200"), memory_bytes=4 * get_gpu("h200").memory_bytes)
    tp1, tp2, tp4 = (RooflineCostModel("llama-3.1-70b", roomy, tp) for tp in (1, 2, 4))
    for batch in (1, 32, 128):
        t1, t2, t4 = (m.step_time_s(decode(batch, 2048)) for m in (tp1, tp2, tp4))
        assert t4 < t2 < t1
        assert t2 > t1 / 2  # the all-reduces are not free


def test_h100_faster_than_a100(cm: RooflineCostModel) -> None:
    a100 = RooflineCostModel("llama-3.1-8b", "a100")
    for shape in (decode(1, 100), decode(128, 2048), prefill((2048, 0)),
                  StepShape(prefill_chunks=((512, 512),), num_decode_requests=64,
                            num_decode_context_tokens=64 * 1000)):
        assert cm.step_time_s(shape) < a100.step_time_s(shape)


def test_step_time_is_the_sum_of_its_operators(cm: RooflineCostModel) -> None:
    shape = StepShape(prefill_chunks=((300, 1000), (64, 0)), num_decode_requests=40,
                      num_decode_context_tokens=40 * 700)
    layers = cm.model.num_layers
    per_layer = (cm.dense_layer_time_s(shape.num_tokens)
                 + cm.attention_prefill_time_s(300, 1000) + cm.attention_prefill_time_s(64, 0)
                 + cm.attention_decode_time_s(40, 40 * 700))
    head = cm.lm_head_time_s(shape.num_requests)
    total = cm.step_time_s(shape)
    assert total > layers * per_layer + head + STEP_CPU_OVERHEAD_S
    assert total == pytest.approx(layers * per_layer + head + STEP_CPU_OVERHEAD_S, rel=0.01)


def test_empty_step_costs_only_the_cpu_overhead(cm: RooflineCostModel) -> None:
    assert cm.step_time_s(StepShape()) == pytest.approx(STEP_CPU_OVERHEAD_S)


def test_70b_does_not_fit_on_one_a100() -> None:
    with pytest.raises(ValueError, match="does not fit on 1 x a100-80gb"):
        RooflineCostModel("llama-3.1-70b", "a100", 1)
    assert RooflineCostModel("llama-3.1-70b", "a100", 2).num_kv_blocks(16) > 0


def test_kv_capacity_is_what_vllm_reports() -> None:
    # vLLM on one H100 80GB, gpu_memory_utilization 0.9, Llama-3.1-8B: ~55 GiB of KV, about 450k
    # tokens (72 GiB budget - 15 GiB weights - activations and runtime).
    cm = RooflineCostModel("llama-3.1-8b", "h100")
    assert 420_000 < cm.num_kv_blocks(16) * 16 < 470_000
    assert cm.num_kv_blocks(32) == cm.num_kv_blocks(16) // 2 or \
        abs(cm.num_kv_blocks(32) - cm.num_kv_blocks(16) / 2) <= 1
    tp2 = RooflineCostModel("llama-3.1-8b", "h100", 2)
    assert tp2.num_kv_blocks(16) > 2 * cm.num_kv_blocks(16)  # weights split, KV doubles and more
    smaller = RooflineCostModel("llama-3.1-8b", "h100", gpu_memory_utilization=0.5)
    assert smaller.num_kv_blocks(16) < cm.num_kv_blocks(16)


def test_kv_heads_replicate_when_tp_exceeds_them() -> None:
    cm = RooflineCostModel("qwen2.5-7b", "h100", 4)  # 28 heads, 4 KV heads: one per rank
    assert cm.kv_bytes_per_token == cm.model.kv_bytes_per_token
    smol = RooflineCostModel("smollm2-135m", "a40", 1)
    assert smol.kv_bytes_per_token == smol.model.kv_bytes_per_token


@pytest.mark.parametrize("kwargs, match", [
    ({"tp": 0}, "tp must be >= 1"), ({"tp": 3}, "must divide"),
    ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization"),
    ({"max_model_len": 200_000}, "max_model_len"), ({"block_size": 0}, "block_size"),
])
def test_bad_configuration_is_a_config_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RooflineCostModel("llama-3.1-8b", "h100", **kwargs)


def test_max_model_len_defaults_to_the_context_and_can_be_lowered() -> None:
    assert RooflineCostModel("llama-3.1-8b", "h100").max_model_len == 131072
    assert RooflineCostModel("llama-3.1-8b", "h100", max_model_len=8192).max_model_len == 8192


def test_swap_and_transfer_times_scale_with_size(cm: RooflineCostModel) -> None:
    assert cm.swap_time_s(0) == 0.0
    one, many = cm.swap_time_s(1), cm.swap_time_s(1000)
    assert 0 < one < many
    # 1000 blocks x 16 tokens x 128 KiB = 2 GiB over PCIe Gen5 at ~51 GB/s: ~42 ms
    assert many == pytest.approx(1000 * 16 * 131072 / (64e9 * 0.8), rel=0.01)
    assert cm.kv_transfer_time_s(0, 10e9) == 0.0
    fast, slow = cm.kv_transfer_time_s(4096, 100e9), cm.kv_transfer_time_s(4096, 10e9)
    assert fast < slow == pytest.approx(4096 * 131072 / 10e9, rel=0.01)
    with pytest.raises(ValueError):
        cm.kv_transfer_time_s(10, 0.0)


def test_step_time_is_fast(cm: RooflineCostModel) -> None:
    shape = StepShape(prefill_chunks=((512, 1024),), num_decode_requests=200,
                      num_decode_context_tokens=200 * 900)
    start = time.perf_counter()
    for _ in range(20_000):
        cm.step_time_s(shape)
    per_call_s = (time.perf_counter() - start) / 20_000
    assert per_call_s < 20e-6  # ~2.5 us on this machine


@pytest.mark.parametrize(("model", "gpu", "tp"), [("llama-3.1-8b", "h100", 1),
                                                  ("llama-2-70b", "a100", 2)])
def test_decode_step_line_equals_step_time_bit_for_bit(model: str, gpu: str, tp: int) -> None:
    cost = RooflineCostModel(model, gpu, tp=tp)
    rng = random.Random(3)
    for n in (1, 2, 7, 64, 255):
        fixed, slope = cost.decode_step_line_s(n)
        for _ in range(50):
            c = rng.randint(n, 400_000)
            shape = StepShape(num_decode_requests=n, num_decode_context_tokens=c)
            assert fixed + slope * c == cost.step_time_s(shape)  # exact, not approx
