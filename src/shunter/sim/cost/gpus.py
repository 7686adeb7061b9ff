"""The GPUs the cost models know, under the names users type (`--gpu h100`); the models are in
`shunter.sim.cost.catalog`, which re-exports these names.

GPU figures are vendor datasheet numbers (dense bf16 tensor-core peak without sparsity, HBM/GDDR
bandwidth, NVLink and PCIe bandwidth per direction) and total memory as `nvidia-smi` reports it,
which is what vLLM multiplies by `gpu_memory_utilization`. The efficiency factors say what fraction
of a peak real kernels reach; where Vidur measured that GPU (`../shared/vidur-profiling`, A100 / H100
/ A40) they are fitted to those measurements (see tests/sim/cost/test_calibration_vidur.py); for the
others they are carried over from the closest measured GPU and say so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from shunter.errors import ConfigError

__all__ = ["GPUS", "GPU_ALIASES", "GpuSpec", "get_gpu", "lookup", "normalise_name"]

T = TypeVar("T")

_MIB = 1024**2


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuSpec:
    """One accelerator: peaks from its datasheet plus the fraction of them kernels really reach."""

    name: str
    bf16_flops_s: float  # dense bf16 tensor-core peak (no 2:4 sparsity)
    memory_bytes: int  # total device memory as nvidia-smi reports it
    memory_bandwidth_bytes_s: float  # HBM / GDDR peak
    intra_node_bandwidth_bytes_s: float  # per direction, per GPU: NVLink, or PCIe P2P without it
    host_bandwidth_bytes_s: float  # PCIe to host memory, per direction
    compute_efficiency: float  # achieved / peak FLOP/s of large bf16 GEMMs
    memory_efficiency: float  # achieved / peak bandwidth of weight-streaming GEMMs
    intra_node_efficiency: float  # achieved ring all-reduce bus bandwidth / link bandwidth
    host_efficiency: float  # achieved pinned-memory copy bandwidth / PCIe peak

    def __post_init__(self) -> None:
        for field_name in ("compute_efficiency", "memory_efficiency", "intra_node_efficiency",
                           "host_efficiency"):
            value = getattr(self, field_name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"gpu {self.name}: {field_name} must be in (0, 1], got {value}")


# Efficiencies fitted to Vidur's measured GEMM times (compute: tokens >= 1024; memory: 1 token).
# PCIe efficiency 0.8: pinned cudaMemcpyAsync reaches ~25 of 32 GB/s on Gen4 x16, ~50 of 64 on Gen5.
# NVLink efficiency: Vidur's NCCL all_reduce.csv (a100_dgx, h100_dgx, 2-8 GPUs, 4-64 MB) gives
# ~175-190 GB/s bus bandwidth on A100 (0.6 of 300 GB/s per direction) and ~300-370 GB/s on H100
# (0.75 of 450). A40/L40S are not measured: 0.6 assumed.
GPUS: dict[str, GpuSpec] = {
    "a100-80gb": GpuSpec(
        name="a100-80gb", bf16_flops_s=312e12, memory_bytes=81920 * _MIB,
        memory_bandwidth_bytes_s=2.039e12, intra_node_bandwidth_bytes_s=300e9,
        host_bandwidth_bytes_s=32e9, compute_efficiency=0.72, memory_efficiency=0.80,
        intra_node_efficiency=0.6, host_efficiency=0.8),
    "a100-40gb": GpuSpec(  # SXM; efficiencies carried over from the measured a100-80gb
        name="a100-40gb", bf16_flops_s=312e12, memory_bytes=40960 * _MIB,
        memory_bandwidth_bytes_s=1.555e12, intra_node_bandwidth_bytes_s=300e9,
        host_bandwidth_bytes_s=32e9, compute_efficiency=0.72, memory_efficiency=0.80,
        intra_node_efficiency=0.6, host_efficiency=0.8),
    "h100": GpuSpec(  # H100 SXM5 80GB HBM3
        name="h100", bf16_flops_s=989.4e12, memory_bytes=81559 * _MIB,
        memory_bandwidth_bytes_s=3.35e12, intra_node_bandwidth_bytes_s=450e9,
        host_bandwidth_bytes_s=64e9, compute_efficiency=0.70, memory_efficiency=0.86,
        intra_node_efficiency=0.75, host_efficiency=0.8),
    "h200": GpuSpec(  # H200 SXM 141GB HBM3e; same die as H100, efficiencies carried over
        name="h200", bf16_flops_s=989.4e12, memory_bytes=143771 * _MIB,
        memory_bandwidth_bytes_s=4.8e12, intra_node_bandwidth_bytes_s=450e9,
        host_bandwidth_bytes_s=64e9, compute_efficiency=0.70, memory_efficiency=0.86,
        intra_node_efficiency=0.75, host_efficiency=0.8),
    "l40s": GpuSpec(  # Ada, 48GB GDDR6, no NVLink (P2P over PCIe Gen4). Not measured: compute
        # efficiency set below the A40's because the L40S is power-limited well under its
        # 362 TFLOP/s datasheet peak in sustained GEMMs.
        name="l40s", bf16_flops_s=362.05e12, memory_bytes=46068 * _MIB,
        memory_bandwidth_bytes_s=864e9, intra_node_bandwidth_bytes_s=32e9,
        host_bandwidth_bytes_s=32e9, compute_efficiency=0.55, memory_efficiency=0.80,
        intra_node_efficiency=0.6, host_efficiency=0.8),
    "a40": GpuSpec(  # Ampere, 48GB GDDR6, 2-way NVLink bridge 112.5 GB/s total (56.25 each way)
        name="a40", bf16_flops_s=149.7e12, memory_bytes=46068 * _MIB,
        memory_bandwidth_bytes_s=696e9, intra_node_bandwidth_bytes_s=56.25e9,
        host_bandwidth_bytes_s=32e9, compute_efficiency=0.74, memory_efficiency=0.80,
        intra_node_efficiency=0.6, host_efficiency=0.8),
    "a10": GpuSpec(  # Ampere GA102, 24GB GDDR6, 150 W, no NVLink (P2P over PCIe Gen4): Llumnix's
        # GPU. Not measured: memory efficiency carried over from the A40 (same memory system);
        # compute efficiency set below the A40's because the 150 W limit holds sustained GEMMs
        # well under the 125 TFLOP/s datasheet peak.
        name="a10", bf16_flops_s=125e12, memory_bytes=23028 * _MIB,
        memory_bandwidth_bytes_s=600e9, intra_node_bandwidth_bytes_s=32e9,
        host_bandwidth_bytes_s=32e9, compute_efficiency=0.6, memory_efficiency=0.80,
        intra_node_efficiency=0.6, host_efficiency=0.8),
}

GPU_ALIASES: dict[str, str] = {
    "a100": "a100-80gb", "a100-sxm": "a100-80gb", "a100-80g": "a100-80gb",
    "a100-40g": "a100-40gb",
    "h100-sxm": "h100", "h100-80gb": "h100", "h100-sxm5": "h100",
    "h200-141gb": "h200", "h200-sxm": "h200",
    "l40s-48gb": "l40s", "a40-48gb": "a40", "a10-24gb": "a10",
}


def normalise_name(name: str) -> str:
    """Lower-case, drop an `org/` prefix and turn spaces/underscores into dashes."""
    key = name.strip().lower().rsplit("/", 1)[-1]
    return re.sub(r"[\s_]+", "-", key)


def lookup(what: str, name: str, table: Mapping[str, T], aliases: Mapping[str, str]) -> T:
    """The entry of a catalog `table` called `name` (normalised, aliases accepted); a
    ConfigError listing the valid names and aliases otherwise."""
    key = normalise_name(name)
    key = aliases.get(key, key)
    if key not in table:
        valid = ", ".join(sorted(table)) + "; aliases: " + ", ".join(sorted(aliases))
        raise ConfigError(f"unknown {what} {name!r}; valid names: {valid}")
    return table[key]


def get_gpu(name: str) -> GpuSpec:
    """The GPU called `name` (case-insensitive, aliases such as `a100` accepted)."""
    return lookup("GPU", name, GPUS, GPU_ALIASES)
