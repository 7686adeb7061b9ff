"""Roofline step-time model of a vLLM-style engine running one dense model on `tp` GPUs
(mixture-of-experts models: `shunter.sim.cost.moe`, a subclass that replaces the MLP), or on
`pp` pipeline stages of `tp` GPUs each (`shunter.sim.cost.pipeline`: `stage_times_s`).

One step is one forward pass over every scheduled token (prefill chunks and decodes together, as
in vLLM v1). Per TP rank and per layer, each operator group costs `max(compute_s, memory_s)`
plus a fixed kernel time, where compute_s = FLOPs / (peak * compute_efficiency) and memory_s =
bytes / (bandwidth * memory_efficiency):

- QKV, O, gate+up and down projections: the weights are read once per step whatever the number
  of tokens (so decode is memory-bound and batching is nearly free until the ridge point); FLOPs
  and activation bytes grow with the number of tokens;
- element-wise kernels (2 fused add+RMSNorm, rotary, KV-cache write, SiLU-and-mul): bytes only;
- attention, prefill: per chunk of n new tokens over c cached ones, `4 * q_dim * n * (c + n)`
  FLOPs (see ATTENTION_PREFILL_EFFICIENCY for why not n * (c + n / 2)) or its KV read if larger;
  decode: memory-bound, reading every decode's KV once;
- speculative decoding's draft tokens (`StepShape.num_decode_draft_tokens`, vLLM's verification
  pass) are query tokens of every projection and element-wise kernel and get logits each, but
  add no KV read: a decode's 1 + k queries read its KV once in one attention tile, and at
  g FLOPs per KV byte and query (bf16; g query heads per KV head, 4 for Llama-3-8B) even
  k = 8 stays far below the ridge (~300 FLOPs/byte on an H100);
- the LM head only for sampled tokens (one per scheduled request, as vLLM computes logits for
  each request's last scheduled position), weights read once, fp32 logits written;
- with tp > 1, two ring all-reduces of the hidden states per layer (plus one for the vocab-parallel
  embedding), each `latency + 2 (tp - 1) / tp * bytes / link bandwidth`, not overlapped;
- a fixed CPU overhead per step (scheduling, input preparation, sampling) plus a bit per request.

A smooth `hypot(compute_s, memory_s)` was tried against Vidur's GEMM measurements: mean error
5.3% against 5.5% for max, same worst case (~25% at the ridge, too slow on H100 for hypot, too
fast on A100 for max), so the plain roofline stays.

All coefficients are folded in `__init__`, so `step_time_s` costs a handful of float operations
(plus a few per prefill chunk). The constants below are fitted to Vidur's A100/H100/A40 operator
measurements (../shared/vidur-profiling) unless their comment says otherwise; tests/sim/cost
holds the comparison.
"""

from __future__ import annotations

from shunter.core.types import DEFAULT_BLOCK_SIZE, StepShape
from shunter.errors import ConfigError
from shunter.sim.cost.catalog import GpuSpec, ModelSpec, get_gpu, get_model
from shunter.sim.cost.pipeline import (
    P2P_LATENCY_S,
    PIPELINE_TENSORS,
    check_pipeline,
    pipeline_layers,
    stage_kv_tokens,
)

__all__ = [
    "ALL_REDUCE_LATENCY_PER_RANK_S",
    "ALL_REDUCE_LATENCY_S",
    "ATTENTION_DECODE_EFFICIENCY",
    "ATTENTION_DECODE_FIXED_S",
    "ATTENTION_PREFILL_FIXED_S",
    "ATTENTION_PREFILL_EFFICIENCY",
    "DEFAULT_GPU_MEMORY_UTILIZATION",
    "DEFAULT_MAX_NUM_BATCHED_TOKENS",
    "ELEMENTWISE_EFFICIENCY",
    "KERNEL_FIXED_S",
    "KV_TRANSFER_LATENCY_S",
    "RUNTIME_RESERVE_BYTES_PER_GPU",
    "RooflineCostModel",
    "STEP_CPU_OVERHEAD_PER_REQUEST_S",
    "STEP_CPU_OVERHEAD_S",
    "SWAP_COPY_LATENCY_S",
    "SWAP_LATENCY_S",
]

# GPU time of a kernel that moves almost nothing (launch ramp-up and tail). Vidur's 1-token
# GEMMs sit ~4 us above bytes / bandwidth; its 1-token RMSNorm/rotary/add kernels take 2-8 us.
KERNEL_FIXED_S = 4e-6
NUM_ELEMENTWISE_KERNELS_PER_LAYER = 5  # vLLM: 2 fused add+RMSNorm, rotary, cache write, SiLU*mul
# Fraction of the GEMM memory efficiency element-wise kernels reach (Vidur norms/act/rope, 4k tokens).
ELEMENTWISE_EFFICIENCY = 0.6
# Attention kernels, fitted to Vidur's A100 Llama-2-70B attention.csv (FlashAttention, TP 2).
# Its prefill times scale as n * (context + n) for a chunk of n new tokens, as if the causal mask
# saved nothing, so that is the pair count used (`4 * q_dim` FLOPs per pair), at 0.37 of peak.
# Decode is memory-bound: 0.78 of peak bandwidth reading the KV of every decode.
ATTENTION_PREFILL_EFFICIENCY = 0.37
ATTENTION_PREFILL_FIXED_S = 20e-6
ATTENTION_DECODE_EFFICIENCY = 0.78
ATTENTION_DECODE_FIXED_S = 16e-6
# All-reduce latency floor: a base plus a little per extra rank. Vidur's NCCL all_reduce.csv
# (a100_dgx, h100_dgx) shows 25-60 us for 0.5-4 MB messages on 2-8 GPUs; vLLM's custom
# all-reduce is somewhat faster for small messages, so the floor sits at the low end.
ALL_REDUCE_LATENCY_S = 15e-6
ALL_REDUCE_LATENCY_PER_RANK_S = 3e-6
# CPU time per step not hidden behind the GPU: scheduling, input preparation, sampling launch.
# Estimate: vLLM v1 overlaps most of it (CUDA graphs, async output processing); the published
# batch-1 TPOTs in tests/sim/cost/test_vllm_throughput.py leave a few tenths of a ms for it.
STEP_CPU_OVERHEAD_S = 0.3e-3
STEP_CPU_OVERHEAD_PER_REQUEST_S = 2e-6
# Memory not available to weights or KV: CUDA context, cuBLAS workspaces, NCCL buffers, CUDA
# graphs (vLLM's "non-torch memory" is typically 0.5-1.5 GiB per GPU). Estimate.
RUNTIME_RESERVE_BYTES_PER_GPU = 1 << 30
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192  # the profile run's token count sizes the activation peak
DEFAULT_MAX_NUM_SEQS = 256  # vLLM's default; sizes the sampler's logits buffers
LOGITS_BYTES = 4  # vLLM computes logits in fp32
SWAP_LATENCY_S = 10e-6  # one cudaMemcpyAsync batch of block copies; estimate
# One host<->device copy call for a run of consecutive blocks of one layer's K or V cache
# (vLLM's swap_blocks issues one cudaMemcpyAsync per block per layer and plane). Launch plus
# DMA setup; estimate from the few-us cost of small cudaMemcpyAsync calls. This is what makes
# scattered 16-token blocks use a fraction of PCIe bandwidth (FastSwitch, Shen et al. 2024).
SWAP_COPY_LATENCY_S = 5e-6
KV_PLANES = 2  # K and V are separate tensors
KV_TRANSFER_LATENCY_S = 50e-6  # connector handshake + first byte over RDMA/NVLink; estimate


class RooflineCostModel:
    """Step time, swap time and KV capacity of `model` on `tp` GPUs of kind `gpu`."""

    # Folded by `_fold_coefficients` and folded again by the MoE subclass: defaults here make
    # them always defined, which the compiled build needs (mypyc crashes on a compiled subclass
    # resetting a base attribute it tracks as possibly undefined).
    _kv_bytes_per_token_rank: int = 0
    _prefill_s_per_kv_token: float = 0.0
    _decode_s_per_kv_token: float = 0.0
    _decode_s_per_context_token: float = 0.0
    _num_all_reduces: int = 0

    def __init__(self, model: ModelSpec | str, gpu: GpuSpec | str, tp: int = 1, *,
                 block_size: int = DEFAULT_BLOCK_SIZE,
                 gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
                 max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
                 max_model_len: int | None = None, pp: int = 1) -> None:
        self.model = get_model(model) if isinstance(model, str) else model
        self.gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
        self.tp = tp
        self.pp = pp  # pipeline stages of `tp` GPUs each (`shunter.sim.cost.pipeline`)
        self.block_size = block_size
        m = self.model
        _validate(m, tp, block_size, gpu_memory_utilization, max_model_len)
        check_pipeline(m, pp)
        self.stage_layers = pipeline_layers(m.num_layers, pp)
        self._max_stage_layers = max(self.stage_layers)  # the layers a swap copies, per GPU
        self._max_model_len = m.max_model_len if max_model_len is None else max_model_len
        self._fold_coefficients()
        self._send_s_per_token = 0.0  # a stage's activations to the next, per token
        if pp > 1:
            link = self.gpu.intra_node_bandwidth_bytes_s * self.gpu.intra_node_efficiency
            self._send_s_per_token = PIPELINE_TENSORS * m.hidden_size * m.dtype_bytes / tp / link
        self._usable_kv_bytes = self._kv_budget_bytes(gpu_memory_utilization, max_num_batched_tokens)

    # ---- folding: everything per call is a multiply-add of these --------------------------

    def _fold_coefficients(self) -> None:
        m, g, tp = self.model, self.gpu, self.tp
        dt = m.dtype_bytes
        h, inter = m.hidden_size, m.intermediate_size // tp
        q_dim = m.num_attention_heads // tp * m.head_dim
        self._kv_heads_per_rank = max(1, m.num_kv_heads // tp)  # replicated when tp > kv heads
        kv_dim = self._kv_heads_per_rank * m.head_dim
        s_per_flop = 1.0 / (g.bf16_flops_s * g.compute_efficiency)
        s_per_byte = 1.0 / (g.memory_bandwidth_bytes_s * g.memory_efficiency)
        # (in_features, out_features) of each projection group; per token it reads in, writes out
        shapes = ((h, q_dim + 2 * kv_dim), (q_dim, h), (h, 2 * inter), (inter, h))
        self._linear = tuple(
            (2.0 * k * n * s_per_flop, k * n * dt * s_per_byte, (k + n) * dt * s_per_byte)
            for k, n in shapes
        )
        elementwise_bytes = (8 * h + 3 * inter + 2 * (q_dim + kv_dim) + 2 * kv_dim) * dt
        self._elementwise_s_per_token = elementwise_bytes * s_per_byte / ELEMENTWISE_EFFICIENCY
        self._layer_fixed_s = (4 + NUM_ELEMENTWISE_KERNELS_PER_LAYER) * KERNEL_FIXED_S
        self._kv_bytes_per_token_rank = 2 * kv_dim * dt
        # attention, per layer
        self._prefill_s_per_pair = 4.0 * q_dim / (g.bf16_flops_s * ATTENTION_PREFILL_EFFICIENCY)
        self._prefill_s_per_kv_token = self._kv_bytes_per_token_rank * s_per_byte
        self._decode_s_per_kv_token = self._kv_bytes_per_token_rank / (
            g.memory_bandwidth_bytes_s * ATTENTION_DECODE_EFFICIENCY)
        self._decode_s_per_context_token = m.num_layers * self._decode_s_per_kv_token  # all layers
        # LM head (vocab-parallel), per step: weights once, FLOPs and fp32 logits per sampled token
        vocab = m.vocab_size / tp
        self._lm_s_per_sample = 2.0 * h * vocab * s_per_flop
        self._lm_weights_s = h * vocab * dt * s_per_byte + KERNEL_FIXED_S
        self._lm_s_per_sample_bytes = vocab * LOGITS_BYTES * s_per_byte
        # embedding gather + final norm, per token
        self._head_s_per_token = 4 * h * dt * s_per_byte / ELEMENTWISE_EFFICIENCY
        # tensor-parallel all-reduces of the hidden states
        if tp > 1:
            self._num_all_reduces = 2 * m.num_layers + 1
            link = g.intra_node_bandwidth_bytes_s * g.intra_node_efficiency
            self._all_reduce_s_per_token = 2.0 * (tp - 1) / tp * h * dt / link
            self._all_reduce_latency_s = ALL_REDUCE_LATENCY_S + ALL_REDUCE_LATENCY_PER_RANK_S * tp
        else:
            self._num_all_reduces = 0
            self._all_reduce_s_per_token = 0.0
            self._all_reduce_latency_s = 0.0

    def _kv_budget_bytes(self, utilization: float, max_num_batched_tokens: int) -> int:
        m, g, tp = self.model, self.gpu, self.tp
        dt, h = m.dtype_bytes, m.hidden_size
        q_dim = m.num_attention_heads // tp * m.head_dim
        kv_dim = self._kv_heads_per_rank * m.head_dim
        inter = m.intermediate_size // tp
        layer_params = h * (q_dim + 2 * kv_dim) + q_dim * h + 3 * h * inter + 2 * h
        embed_params = m.vocab_size // tp * h * (1 if m.tie_word_embeddings else 2)
        weights_per_rank = (m.num_layers * layer_params + embed_params + h) * dt
        activation_per_token = (4 * h + 3 * inter + q_dim + 2 * kv_dim) * dt
        reserve_per_rank = (RUNTIME_RESERVE_BYTES_PER_GPU
                            + max_num_batched_tokens * activation_per_token
                            + 2 * DEFAULT_MAX_NUM_SEQS * m.vocab_size // tp * LOGITS_BYTES)
        budget_per_rank = int(g.memory_bytes * utilization)
        if self.pp > 1:
            tokens = stage_kv_tokens(
                f"{m.name} on pp={self.pp} stages of {tp} x {g.name}", self.stage_layers,
                layer_bytes=layer_params * dt, vocab_bytes=m.vocab_size // tp * h * dt,
                norm_bytes=h * dt, reserve_bytes=reserve_per_rank, budget_bytes=budget_per_rank,
                kv_bytes_per_layer_token=self._kv_bytes_per_token_rank)
            return tokens * m.num_layers * self._kv_bytes_per_token_rank * tp
        usable_per_rank = budget_per_rank - weights_per_rank - reserve_per_rank
        if usable_per_rank <= 0:
            gib = 1 << 30
            raise ConfigError(
                f"{m.name} does not fit on {tp} x {g.name}: each GPU holds "
                f"{weights_per_rank / gib:.1f} GiB of weights + {reserve_per_rank / gib:.1f} GiB "
                f"activations/runtime, over its {budget_per_rank / gib:.1f} GiB "
                f"({utilization:.0%} of {g.memory_bytes / gib:.1f} GiB); use more GPUs (tp) or a "
                f"larger GPU")
        return usable_per_rank * tp

    # ---- per-operator times (per layer, per TP rank); also what the calibration tests check ----

    def dense_layer_time_s(self, num_tokens: int) -> float:
        """One layer's projections and element-wise kernels (no attention kernel, no all-reduce)."""
        t = float(num_tokens)
        total = self._layer_fixed_s + self._elementwise_s_per_token * t
        for compute_s, weights_s, io_s in self._linear:
            total += max(compute_s * t, weights_s + io_s * t)
        return total

    def attention_prefill_time_s(self, num_new_tokens: int, num_context_tokens: int) -> float:
        """One layer's attention for one prefill chunk over `num_context_tokens` cached tokens."""
        kv_tokens = num_context_tokens + num_new_tokens
        return ATTENTION_PREFILL_FIXED_S + max(num_new_tokens * kv_tokens * self._prefill_s_per_pair,
                                               kv_tokens * self._prefill_s_per_kv_token)

    def attention_decode_time_s(self, num_decode_requests: int, num_context_tokens: int) -> float:
        """One layer's attention for a batch of decodes reading `num_context_tokens` KV in all."""
        if num_decode_requests == 0:
            return 0.0
        return ATTENTION_DECODE_FIXED_S + num_context_tokens * self._decode_s_per_kv_token

    def all_reduce_time_s(self, num_tokens: int) -> float:
        """One all-reduce of the hidden states of `num_tokens` tokens across the TP group."""
        if self.tp == 1:
            return 0.0
        return self._all_reduce_latency_s + self._all_reduce_s_per_token * num_tokens

    def lm_head_time_s(self, num_sampled_tokens: int) -> float:
        """The LM head (and fp32 logits) for `num_sampled_tokens` sampled positions, per step."""
        s = float(num_sampled_tokens)
        return max(self._lm_s_per_sample * s,
                          self._lm_weights_s + self._lm_s_per_sample_bytes * s)

    # ---- the CostModel protocol ---------------------------------------------------------------

    def step_time_s(self, shape: StepShape) -> float:
        """Predicted wall time of one step; see the module docstring for the model.

        The decode attention's per-KV-token term is added last, so a decode-only step is exactly
        `fixed + slope * context tokens` (`decode_step_line_s`). With `pp` > 1: a batch's
        latency through every stage (`stage_times_s`, summed)."""
        if self.pp > 1:
            return sum(self.stage_times_s(shape))
        num_decodes = shape.num_decode_requests
        num_tokens, num_requests, attention_s, cpu_s = self._batch(shape)
        if num_tokens == 0:
            return cpu_s
        if num_decodes:
            attention_s += ATTENTION_DECODE_FIXED_S
        t = float(num_tokens)
        layer_s = self._layer_fixed_s + self._elementwise_s_per_token * t + attention_s
        for compute_s, weights_s, io_s in self._linear:
            layer_s += max(compute_s * t, weights_s + io_s * t)
        comm_s = self._num_all_reduces * (self._all_reduce_latency_s
                                          + self._all_reduce_s_per_token * t)
        head_s = (self.lm_head_time_s(num_requests + shape.num_decode_draft_tokens)
                  + self._head_s_per_token * t)
        fixed_s = (cpu_s + self.model.num_layers * layer_s + comm_s + head_s
                   + self._mlp_time_s(num_tokens))
        if not num_decodes:
            return fixed_s
        return fixed_s + self._decode_s_per_context_token * shape.num_decode_context_tokens

    def stage_times_s(self, shape: StepShape) -> list[float]:
        """Busy time of each pipeline stage for one batch (`StagedCostModel`): its layers as
        in `step_time_s` (two all-reduces each), the CPU overhead and the embedding's
        all-reduce on the first stage, the LM head on the last, and on every stage but the
        last the send of its activations to the next (`shunter.sim.cost.pipeline`)."""
        num_decodes = shape.num_decode_requests
        num_tokens, num_requests, attention_s, cpu_s = self._batch(shape)
        times = [0.0] * self.pp
        times[0] = cpu_s
        if num_tokens == 0:
            return times
        if num_decodes:
            attention_s += (ATTENTION_DECODE_FIXED_S
                            + self._decode_s_per_kv_token * shape.num_decode_context_tokens)
        t = float(num_tokens)
        all_reduce_s = self.all_reduce_time_s(num_tokens)
        layer_s = (self._layer_fixed_s + self._elementwise_s_per_token * t + attention_s
                   + 2 * all_reduce_s)
        for compute_s, weights_s, io_s in self._linear:
            layer_s += max(compute_s * t, weights_s + io_s * t)
        send_s, last = P2P_LATENCY_S + self._send_s_per_token * t, self.pp - 1
        for s, num_layers in enumerate(self.stage_layers):
            times[s] += num_layers * layer_s + (send_s if s < last else 0.0)
        times[0] += all_reduce_s
        times[last] += (self.lm_head_time_s(num_requests + shape.num_decode_draft_tokens)
                        + self._head_s_per_token * t)
        return times

    def _batch(self, shape: StepShape) -> tuple[int, int, float, float]:
        """(tokens, requests, prefill attention time, CPU overhead) of one step's batch: what
        `step_time_s` and `stage_times_s` both start from."""
        num_decodes = shape.num_decode_requests
        num_tokens = num_decodes + shape.num_decode_draft_tokens  # (drafts: see the docstring)
        attention_s = 0.0
        per_pair, per_kv = self._prefill_s_per_pair, self._prefill_s_per_kv_token
        for num_new, num_context in shape.prefill_chunks:
            num_tokens += num_new
            kv_tokens = num_context + num_new
            attention_s += ATTENTION_PREFILL_FIXED_S + max(num_new * kv_tokens * per_pair,
                                                           kv_tokens * per_kv)
        num_requests = len(shape.prefill_chunks) + num_decodes
        cpu_s = STEP_CPU_OVERHEAD_S + STEP_CPU_OVERHEAD_PER_REQUEST_S * num_requests
        return num_tokens, num_requests, attention_s, cpu_s

    def _mlp_time_s(self, num_tokens: int) -> float:
        """MLP time not in `_linear`: none for a dense model (+ 0.0 changes no float);
        mixture-of-experts models (`shunter.sim.cost.moe`) add their experts here."""
        return 0.0

    def decode_step_line_s(self, num_decodes: int) -> tuple[float, float]:
        """(fixed, slope): `step_time_s` of a decode-only step of `num_decodes` requests reading
        `c` KV tokens in all is `fixed + slope * c`, bit for bit (the same operations; with
        `pp` > 1 only to rounding, which is why the simulator takes no bulk runs there)."""
        return (self.step_time_s(StepShape(num_decode_requests=num_decodes)),
                self._decode_s_per_context_token)

    def swap_time_s(self, num_blocks: int, num_runs: int | None = None) -> float:
        """Host<->device copy of `num_blocks` blocks of `block_size` tokens; ranks copy in parallel.

        With `num_runs` (runs of consecutive block ids), each run costs one copy call per layer
        and K/V plane: per-call latency x calls + bytes / bandwidth. Without, one batched copy."""
        if num_blocks <= 0:
            return 0.0
        # (each pipeline stage copies its own layers' KV at once: the fullest stage's time)
        bytes_per_rank = (num_blocks * self.block_size * self._max_stage_layers
                          * self._kv_bytes_per_token_rank)
        link = self.gpu.host_bandwidth_bytes_s * self.gpu.host_efficiency
        if num_runs is None:
            return SWAP_LATENCY_S + bytes_per_rank / link
        num_copies = num_runs * self._max_stage_layers * KV_PLANES
        return SWAP_COPY_LATENCY_S * num_copies + bytes_per_rank / link

    def kv_transfer_time_s(self, num_tokens: int, bandwidth_bytes_s: float) -> float:
        """KV of `num_tokens` tokens (all layers, all ranks) over a link of `bandwidth_bytes_s`."""
        if bandwidth_bytes_s <= 0:
            raise ValueError(f"bandwidth_bytes_s must be > 0, got {bandwidth_bytes_s}")
        if num_tokens <= 0:
            return 0.0
        return KV_TRANSFER_LATENCY_S + num_tokens * self.kv_bytes_per_token / bandwidth_bytes_s

    def num_kv_blocks(self, block_size: int) -> int:
        """KV blocks of `block_size` tokens that fit in the memory left after weights and reserve."""
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        return self._usable_kv_bytes // (block_size * self.kv_bytes_per_token)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes one token occupies over all layers and all TP ranks (replicas included)."""
        return self.model.num_layers * self._kv_bytes_per_token_rank * self.tp

    @property
    def max_model_len(self) -> int:
        return self._max_model_len


def _validate(m: ModelSpec, tp: int, block_size: int, utilization: float,
              max_model_len: int | None) -> None:
    if tp < 1:
        raise ConfigError(f"tp must be >= 1, got {tp}")
    if m.num_attention_heads % tp:
        raise ConfigError(f"tp={tp} must divide {m.name}'s {m.num_attention_heads} attention heads")
    if m.num_kv_heads % tp and tp % m.num_kv_heads:
        raise ConfigError(f"tp={tp} and {m.name}'s {m.num_kv_heads} KV heads must divide one another")
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")
    if not 0.0 < utilization <= 1.0:
        raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
    if max_model_len is not None and not 1 <= max_model_len <= m.max_model_len:
        raise ConfigError(
            f"max_model_len must be in [1, {m.max_model_len}] for {m.name}, got {max_model_len}")
