"""LoRA cost: adapter slots take KV memory, steps pay the LoRA kernels, missing adapters load."""

import math

import pytest

from shunter.core.sched.interface import ScheduledChunk, SchedulerOutput
from shunter.errors import ConfigError
from shunter.sim.cost.lora import AdapterCache, LoraConfig, LoraCostModel, lora_slices
from shunter.sim.cost.registry import make_cost_model


def lora_model(**config) -> LoraCostModel:
    return LoraCostModel(make_cost_model("roofline", "llama-3.1-8b", "a100-80gb"),
                         LoraConfig(**config))


def step(*chunks: tuple[str, int], finished: tuple[str, ...] = ()) -> SchedulerOutput:
    return SchedulerOutput(step_id=1, finished_ids=finished, chunks=tuple(
        ScheduledChunk(rid, 10, n, (), True) for rid, n in chunks))


def test_an_adapter_slot_has_the_size_of_rank_times_every_projection():
    model = lora_model(max_lora_rank=16)
    # Llama-3.1-8B: hidden 4096, 32 q heads and 8 kv heads of 128, MLP 14336, 32 layers
    per_layer = (4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 2 * (4096 + 14336) \
        + (14336 + 4096)
    assert sum(i + o for i, o in lora_slices(model.base)) == per_layer
    assert model.slot_bytes == 32 * 16 * per_layer * 2  # bf16: ~84 MB, as PEFT's rank-16 files
    assert 80e6 < model.slot_bytes < 90e6


def test_slots_reduce_the_kv_cache_by_their_bytes():
    base = make_cost_model("roofline", "llama-3.1-8b", "a100-80gb")
    block_bytes = 16 * base.kv_bytes_per_token
    for max_loras in (1, 8, 32):
        model = lora_model(max_loras=max_loras)
        lost = base.num_kv_blocks(16) - model.num_kv_blocks(16)
        assert lost == math.ceil(max_loras * model.slot_bytes / block_bytes)
    assert lora_model(max_loras=32, max_lora_rank=64).num_kv_blocks(16) < \
        lora_model(max_loras=32).num_kv_blocks(16)


def test_lora_compute_grows_with_tokens_and_adapters_and_is_free_without_lora_tokens():
    model = lora_model()
    assert model.compute_s(0, 0) == 0.0
    one = model.compute_s(1, 1)
    assert 0 < one < 2e-3  # kernel launches dominate a single decode token
    assert model.compute_s(1, 4) > one  # each distinct adapter's weights are read
    assert model.compute_s(4096, 1) > model.compute_s(64, 1)
    # a large prefill is compute-bound: 2 r (in + out) FLOPs per token per slice
    assert model.compute_s(8192, 1) == pytest.approx(2 * model.compute_s(4096, 1), rel=0.05)


def test_a_missing_adapter_is_loaded_once_then_stays_in_its_slot():
    model = lora_model(max_loras=2, max_cpu_loras=2)
    cache = AdapterCache(model)
    cache.register("r1", "x")
    first = cache.step_s(step(("r1", 1)))
    assert (cache.num_loads, cache.num_storage_loads) == (1, 1)
    assert first == pytest.approx(model.load_s + model.storage_load_s + model.compute_s(1, 1))
    assert cache.step_s(step(("r1", 1))) == model.compute_s(1, 1)  # resident: no load
    assert cache.num_loads == 1
    assert 1e-3 < model.load_s < 20e-3  # ~84 MB over PCIe 4.0 plus per-copy latency


def test_slots_are_least_recently_used_and_the_host_cache_saves_storage_reads():
    model = lora_model(max_loras=1, max_cpu_loras=2)
    cache = AdapterCache(model)
    for rid, lora in (("r1", "x"), ("r2", "y")):
        cache.register(rid, lora)
    for rid in ("r1", "r2", "r1", "r2"):
        cache.step_s(step((rid, 1)))
    assert cache.num_loads == 4  # one slot: every switch copies the adapter in again
    assert cache.num_storage_loads == 2  # but only the first of each reads storage
    assert list(cache.gpu) == ["y"]


def test_finished_requests_release_their_adapters_from_the_view():
    cache = AdapterCache(lora_model(max_loras=1))
    cache.register("r1", "x")
    cache.register("r2", "y")
    assert cache.lora_ids == {"x", "y"}  # y is wanted by a queued request
    cache.step_s(step(("r1", 1)))
    cache.step_s(step(("r2", 1), finished=("r1",)))
    assert cache.lora_ids == {"y"}


def test_a_bulk_decode_step_costs_exactly_what_a_real_one_does():
    cache = AdapterCache(lora_model(max_loras=3))
    for i in range(5):
        cache.register(f"r{i}", f"a{i % 3}")
    ids = [f"r{i}" for i in range(5)] + ["base"]
    assert cache.run_s(ids) is None  # the adapters are not in their slots yet
    real = cache.step_s(step(*((rid, 1) for rid in ids)))
    assert cache.run_s(ids) == cache.step_s(step(*((rid, 1) for rid in ids)))
    assert real > cache.run_s(ids)  # the first step paid the loads
    assert cache.run_s(ids[:2]) is None  # other adapters than the last step's


@pytest.mark.parametrize(("table", "key"), [
    ({"max_loras": 0}, "max_loras"), ({"max_lora_rank": 0}, "max_lora_rank"),
    ({"max_loras": 4, "max_cpu_loras": 2}, "max_cpu_loras"), ({"num_adapters": -1}, "num_adapters"),
    ({"zipf": -0.5}, "zipf"), ({"max_loras": 1.5}, "max_loras"), ({"max_lora": 2}, "max_lora"),
])
def test_bad_settings_are_refused_by_name(table, key):
    with pytest.raises(ConfigError, match=key):
        LoraConfig.from_table(table)


def test_lora_needs_the_roofline_model_and_room_for_its_slots():
    with pytest.raises(ConfigError, match="no KV cache"):
        lora_model(max_loras=2000, max_lora_rank=64).num_kv_blocks(16)
