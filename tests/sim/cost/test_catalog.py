from __future__ import annotations

import pytest

from shunter.errors import ConfigError
from shunter.sim.cost import catalog
from shunter.sim.cost.catalog import GPUS, MODELS, get_gpu, get_model


def test_required_names_exist() -> None:
    for name in ("a100-80gb", "a100", "h100", "h200", "l40s", "a100-40gb", "a40", "a10"):
        assert get_gpu(name).name in GPUS
    for name in ("llama-3.1-8b", "llama-3.1-70b", "llama-2-70b", "llama-2-7b", "qwen2.5-7b",
                 "mistral-7b", "smollm2-135m", "llama-7b", "llama-30b", "opt-13b", "opt-66b",
                 "opt-175b"):
        assert get_model(name).name == name


def test_lookup_is_case_insensitive_and_takes_aliases_and_hub_ids() -> None:
    assert get_gpu("A100").name == "a100-80gb"
    assert get_gpu(" H100-SXM ").name == "h100"
    assert get_model("meta-llama/Llama-2-7b-hf").name == "llama-2-7b"
    assert get_model("meta-llama/Meta-Llama-3.1-8B-Instruct").name == "llama-3.1-8b"
    assert get_model("Qwen/Qwen2.5-7B-Instruct").name == "qwen2.5-7b"
    assert get_model("HuggingFaceTB/SmolLM2-135M").name == "smollm2-135m"


@pytest.mark.parametrize("lookup, bad", [(get_gpu, "b200"), (get_model, "gpt-5")])
def test_unknown_names_raise_value_error_listing_valid_names(lookup, bad) -> None:
    with pytest.raises(ValueError, match="valid names") as info:
        lookup(bad)
    assert isinstance(info.value, ConfigError)
    assert bad in str(info.value)


def test_context_lengths() -> None:
    expected = {"llama-3.1-8b": 131072, "llama-3.1-70b": 131072, "llama-2-70b": 4096,
                "llama-2-7b": 4096, "qwen2.5-7b": 32768, "mistral-7b": 32768,
                "smollm2-135m": 8192}
    assert {name: get_model(name).max_model_len for name in expected} == expected
    assert get_model("mistral-7b").sliding_window == 4096


@pytest.mark.parametrize("name, billions", [
    ("llama-3.1-8b", 8.03), ("llama-3.1-70b", 70.55), ("llama-2-7b", 6.74),
    ("llama-2-70b", 68.98), ("qwen2.5-7b", 7.62), ("mistral-7b", 7.24), ("smollm2-135m", 0.1348),
    ("llama-7b", 6.74), ("llama-30b", 32.5), ("opt-13b", 12.85), ("opt-66b", 65.7),
    ("opt-175b", 175.0),
])
def test_parameter_counts_match_published_sizes(name: str, billions: float) -> None:
    assert get_model(name).num_params / 1e9 == pytest.approx(billions, rel=0.01)


def test_kv_bytes_per_token() -> None:
    assert get_model("llama-3.1-8b").kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # 128 KiB
    assert get_model("llama-2-7b").kv_bytes_per_token == 2 * 32 * 32 * 128 * 2  # 512 KiB


def test_gpu_specs_are_sane() -> None:
    for gpu in GPUS.values():
        assert gpu.memory_bandwidth_bytes_s < gpu.bf16_flops_s
        assert 20 * 2**30 < gpu.memory_bytes < 150 * 2**30
    assert get_gpu("h100").bf16_flops_s > get_gpu("a100").bf16_flops_s
    assert get_gpu("h200").memory_bytes > get_gpu("h100").memory_bytes


def test_bad_efficiency_rejected() -> None:
    with pytest.raises(ValueError, match="compute_efficiency"):
        catalog.GpuSpec(name="x", bf16_flops_s=1e12, memory_bytes=1, memory_bandwidth_bytes_s=1e9,
                        intra_node_bandwidth_bytes_s=1e9, host_bandwidth_bytes_s=1e9,
                        compute_efficiency=1.5, memory_efficiency=0.5,
                        intra_node_efficiency=0.5, host_efficiency=0.5)


def test_all_names_resolve_to_themselves() -> None:
    for name in MODELS:
        assert get_model(name).name == name
    for alias, target in catalog.MODEL_ALIASES.items():
        assert get_model(alias).name == target
    for alias, target in catalog.GPU_ALIASES.items():
        assert get_gpu(alias).name == target
