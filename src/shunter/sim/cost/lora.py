"""LoRA adapters in the simulator: their GPU memory, their per-step compute, their loads.

Settings follow vLLM's names and defaults (`vllm.config.LoRAConfig`): `max_loras` adapter slots
on the GPU (default 1), each `max_lora_rank` wide (default 16), and `max_cpu_loras` adapters
cached in host memory (default: `max_loras`).

Targeted projections: vLLM preallocates its GPU slots for every LoRA-capable linear layer of
the model whatever an adapter targets (`LoRAModelManager` creates `lora_a`/`lora_b` stacks of
`max_loras` x `max_lora_rank` for each packed module): for Llama-style models qkv_proj
(q, k, v slices), o_proj, gate_up_proj (gate, up slices) and down_proj, in every layer
(embeddings and LM head left out: vLLM no longer serves extra-vocabulary adapters). Each slice
of `in -> out` features has A (in x r) and B (r x out). Under tensor parallelism vLLM shards B of
column-parallel layers (qkv, gate_up) and A of row-parallel ones (o, down) and replicates the
other (`ColumnParallelLinearWithLoRA`, `RowParallelLinearWithLoRA`), which the per-rank sizes
below follow. Mixture-of-experts models: attention only (vLLM's fused-MoE LoRA is recent).

- memory: `max_loras` x rank x sum(in + out) x dtype bytes per layer, per GPU, taken from the
  KV cache (`LoraCostModel.num_kv_blocks`);
- compute, per step (Punica's SGMV / S-LoRA's MBGMV, vLLM's `lora_shrink` + `lora_expand`):
  per layer and packed module two kernels; 2 x tokens x r x (in + out) FLOPs per slice over the
  step's LoRA tokens, reading each distinct adapter's weights once plus the tokens'
  activations, `max(compute, memory)` at the GPU's GEMM efficiencies (the roofline's), plus
  `KERNEL_FIXED_S` per kernel. Steps without LoRA tokens pay nothing;
- loads (`AdapterCache`): a step whose adapter is not in a GPU slot copies it from host
  memory first (one copy per A and B per slice and layer, `SWAP_COPY_LATENCY_S` each, plus
  bytes over the host link), evicting the least recently used slot the step does not need;
  an adapter not in the host cache is read from storage first (`LORA_STORAGE_BYTES_S`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from shunter.core.sched.interface import SchedulerOutput
from shunter.core.types import RequestId, StepShape, check_number
from shunter.errors import ConfigError, check_keys
from shunter.sim.cost.interface import CostModel
from shunter.sim.cost.roofline import KERNEL_FIXED_S, SWAP_COPY_LATENCY_S, RooflineCostModel
from shunter.workload.lora import DEFAULT_LORA_ZIPF

__all__ = ["DEFAULT_MAX_LORAS", "DEFAULT_MAX_LORA_RANK", "LORA_STORAGE_BYTES_S", "AdapterCache",
           "LoraConfig", "LoraCostModel", "lora_slices", "no_adapters_message"]

DEFAULT_MAX_LORAS = 1  # vLLM's LoRAConfig.max_loras
DEFAULT_MAX_LORA_RANK = 16  # vLLM's LoRAConfig.max_lora_rank
# Reading an adapter (safetensors) from local storage into host memory. Estimate: a PCIe 4.0
# NVMe SSD reads 3-7 GB/s sequentially (datasheets); file opening, parsing and tensor setup
# in vLLM's `LoRAModel.from_local_checkpoint` leave about half of the low end.
LORA_STORAGE_BYTES_S = 1.5e9
KERNELS_PER_MODULE = 2  # shrink (x @ A) and expand (.. @ B): Punica's SGMV pair, vLLM's punica ops


@dataclass(frozen=True, slots=True, kw_only=True)
class LoraConfig:
    """A scenario's [lora] table: vLLM's LoRA settings, plus adapters for the workload.

    `num_adapters` > 0 gives each request one of that many adapters ("lora-0" most popular),
    drawn with popularity 1 / (k + 1)^`zipf` (`shunter.workload.lora`); 0 keeps the adapters
    the trace names (JSONL `lora_id`)."""

    max_loras: int = DEFAULT_MAX_LORAS
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    max_cpu_loras: int | None = None  # None: max_loras (vLLM)
    num_adapters: int = 0
    zipf: float = DEFAULT_LORA_ZIPF

    def __post_init__(self) -> None:
        for name in ("max_loras", "max_lora_rank", "max_cpu_loras", "num_adapters"):
            value = getattr(self, name)
            if value is None and name == "max_cpu_loras":
                continue
            if type(value) is not int:
                raise ConfigError(f"lora {name} must be a whole number, got {value!r}")
        if self.max_loras < 1:
            raise ConfigError(f"lora max_loras must be >= 1, got {self.max_loras}")
        if self.max_lora_rank < 1:
            raise ConfigError(f"lora max_lora_rank must be >= 1, got {self.max_lora_rank}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ConfigError(f"lora max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras "
                              f"({self.max_loras}), as in vLLM")
        if self.num_adapters < 0:
            raise ConfigError(f"lora num_adapters must be >= 0, got {self.num_adapters}")
        try:
            check_number("lora zipf", self.zipf, ge=0)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def num_cpu_slots(self) -> int:
        return self.max_loras if self.max_cpu_loras is None else self.max_cpu_loras

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "[lora]") -> LoraConfig:
        """From a scenario table or CLI flags; unknown keys are a ConfigError naming them."""
        check_keys(table, (f.name for f in fields(cls)), where)
        try:
            return cls(**table)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def lora_slices(base: RooflineCostModel) -> list[tuple[int, int]]:
    """(in, out) features per TP rank of each LoRA slice of one layer (see the module docstring)."""
    m, tp = base.model, base.tp
    h = m.hidden_size
    q = m.num_attention_heads // tp * m.head_dim
    kv = max(1, m.num_kv_heads // tp) * m.head_dim
    slices = [(h, q), (h, kv), (h, kv), (q, h)]  # qkv (column: B sharded), o (row: A sharded)
    if not m.is_moe:
        inter = m.intermediate_size // tp
        slices += [(h, inter), (h, inter), (inter, h)]  # gate, up (column), down (row)
    return slices


class LoraCostModel:
    """A cost model with LoRA slots: the base model's times, KV capacity less the adapters'
    GPU memory, and the LoRA terms `AdapterCache` adds to each step."""

    def __init__(self, base: CostModel, config: LoraConfig) -> None:
        if not isinstance(base, RooflineCostModel):
            raise ConfigError("LoRA is modelled on the roofline cost model (it sizes adapters "
                              "from the model's layers), without pipeline stages or "
                              "speculative decoding")
        self.base = base
        self.config = config
        m, g = base.model, base.gpu
        r, dt = config.max_lora_rank, m.dtype_bytes
        slices = lora_slices(base)
        features = sum(i + o for i, o in slices)  # per layer, per rank
        self.adapter_bytes_per_rank = m.num_layers * r * features * dt
        self.slot_bytes = self.adapter_bytes_per_rank * base.tp  # one GPU slot, all ranks
        s_per_flop = 1.0 / (g.bf16_flops_s * g.compute_efficiency)
        s_per_byte = 1.0 / (g.memory_bandwidth_bytes_s * g.memory_efficiency)
        num_modules = 4 if not m.is_moe else 2  # packed: qkv, o, gate_up, down
        self._layers = m.num_layers
        self._fixed_s = num_modules * KERNELS_PER_MODULE * KERNEL_FIXED_S
        self._s_per_token_flops = 2.0 * r * features * s_per_flop
        self._s_per_adapter = r * features * dt * s_per_byte
        self._s_per_token_bytes = features * dt * s_per_byte
        link = g.host_bandwidth_bytes_s * g.host_efficiency
        num_copies = m.num_layers * len(slices) * 2  # A and B of each slice and layer
        self.load_s = num_copies * SWAP_COPY_LATENCY_S + self.adapter_bytes_per_rank / link
        self.storage_load_s = self.adapter_bytes_per_rank * base.tp / LORA_STORAGE_BYTES_S

    def compute_s(self, num_tokens: int, num_adapters: int) -> float:
        """Extra time of a step running `num_tokens` LoRA tokens of `num_adapters` adapters."""
        if num_tokens == 0:
            return 0.0
        t = float(num_tokens)
        layer_s = self._fixed_s + max(self._s_per_token_flops * t,
                                      self._s_per_adapter * num_adapters
                                      + self._s_per_token_bytes * t)
        return self._layers * layer_s

    # ---- the CostModel protocol: the base model's, less the slots' memory -------------------

    def step_time_s(self, shape: StepShape) -> float:
        return self.base.step_time_s(shape)

    def decode_step_line_s(self, num_decodes: int) -> tuple[float, float]:
        return self.base.decode_step_line_s(num_decodes)

    def swap_time_s(self, num_blocks: int, num_runs: int | None = None) -> float:
        return self.base.swap_time_s(num_blocks, num_runs)

    def kv_transfer_time_s(self, num_tokens: int, bandwidth_bytes_s: float) -> float:
        return self.base.kv_transfer_time_s(num_tokens, bandwidth_bytes_s)

    def num_kv_blocks(self, block_size: int) -> int:
        """The base model's blocks less those the `max_loras` slots take."""
        block_bytes = block_size * self.base.kv_bytes_per_token
        lost = math.ceil(self.config.max_loras * self.slot_bytes / block_bytes)
        blocks = self.base.num_kv_blocks(block_size) - lost
        if blocks < 1:
            raise ConfigError(f"lora: {self.config.max_loras} adapter slots of rank "
                              f"{self.config.max_lora_rank} leave no KV cache; lower max_loras "
                              "or max_lora_rank")
        return blocks

    @property
    def kv_bytes_per_token(self) -> int:
        return self.base.kv_bytes_per_token

    @property
    def max_model_len(self) -> int:
        return self.base.max_model_len


class AdapterCache:
    """One replica's adapters: which GPU slots and host cache entries they hold (LRU each),
    and what each step pays for them (`step_s`). The executor registers every request's
    adapter; base-model requests are not registered.

    Within one step the adapters are touched in sorted order, so a step with the same
    adapters as the last one changes nothing: the simulator's bulk decode runs (whose steps
    serve exactly the last real step's requests) need no bookkeeping (`run_s`)."""

    __slots__ = ("_last", "_loras", "_num_live", "cost", "cpu", "gpu", "num_loads",
                 "num_storage_loads")

    def __init__(self, cost: LoraCostModel) -> None:
        self.cost = cost
        self._loras: dict[RequestId, str] = {}
        self._num_live: dict[str, int] = {}  # adapter -> requests here that use it
        self.gpu: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.cpu: OrderedDict[str, None] = OrderedDict()
        self._last: frozenset[str] = frozenset()  # the last step's adapters
        self.num_loads = 0  # host -> GPU copies
        self.num_storage_loads = 0  # storage -> host reads

    def register(self, request_id: RequestId, lora_id: str) -> None:
        self._loras[request_id] = lora_id
        self._num_live[lora_id] = self._num_live.get(lora_id, 0) + 1

    def forget(self, request_id: RequestId) -> None:
        lora = self._loras.pop(request_id, None)
        if lora is not None:
            left = self._num_live[lora] - 1
            if left:
                self._num_live[lora] = left
            else:
                del self._num_live[lora]

    def lora_of(self, request_id: RequestId) -> str | None:
        return self._loras.get(request_id)

    @property
    def lora_ids(self) -> frozenset[str]:
        """Adapters in a GPU slot or wanted by a request here (what an affinity router reads)."""
        return frozenset(self.gpu).union(self._num_live)

    def step_s(self, output: SchedulerOutput) -> float:
        """The LoRA time a step adds: loads of adapters not in a slot, then the LoRA kernels."""
        for request_id in output.finished_ids:
            self.forget(request_id)
        loras = self._loras
        num_tokens = 0
        used: set[str] = set()
        for chunk in output.chunks:
            lora = loras.get(chunk.request_id)
            if lora is not None:
                num_tokens += chunk.num_scheduled_tokens
                used.add(lora)
        load_s = 0.0
        ordered = sorted(used)
        for lora in ordered:
            if lora not in self.gpu:
                load_s += self._load(lora, used)
        for lora in ordered:
            self.gpu.move_to_end(lora)
        self._last = frozenset(used)
        return load_s + self.cost.compute_s(num_tokens, len(used))

    def _load(self, lora: str, used: set[str]) -> float:
        load_s = self.cost.load_s
        self.num_loads += 1
        if lora in self.cpu:
            self.cpu.move_to_end(lora)
        else:
            self.num_storage_loads += 1
            load_s += self.cost.storage_load_s
            if len(self.cpu) >= self.cost.config.num_cpu_slots:
                self.cpu.popitem(last=False)
            self.cpu[lora] = None
        if len(self.gpu) >= self.cost.config.max_loras:
            victim = next((x for x in self.gpu if x not in used), None)
            assert victim is not None, "a step uses more adapters than max_loras"
            del self.gpu[victim]
        self.gpu[lora] = None
        return load_s

    def run_s(self, request_ids: Sequence[RequestId]) -> float | None:
        """The LoRA time of each decode step serving `request_ids` (one token each) in a bulk
        run, bit for bit `step_s` of such a step; None if such a step would change the slots
        (its adapters are not exactly the last step's): then the run must not be taken."""
        loras = self._loras
        num_tokens = 0
        used: set[str] = set()
        for rid in request_ids:
            lora = loras.get(rid)
            if lora is not None:
                num_tokens += 1
                used.add(lora)
        if used != self._last:
            return None
        return self.cost.compute_s(num_tokens, len(used))


def no_adapters_message(count: int | None, example: str | None) -> str:
    """The error for a workload that names adapters in a scenario without [lora]."""
    many = ("requests name" if count is None else
            "1 request names" if count == 1 else f"{count:,} requests name")
    return (f"the workload's {many} LoRA adapters (lora_id, e.g. {example!r}) but the scenario "
            "models none: add a [lora] table or --max-loras (or drop lora_id from the trace)")
