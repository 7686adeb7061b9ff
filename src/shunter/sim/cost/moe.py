"""Roofline step time of a mixture-of-experts model on `tp` GPUs with expert parallelism `ep`.

Parallelism. A replica is `tp` GPUs. Attention, the dense layers' MLPs, shared experts and the
LM head are tensor-parallel over all `tp`, as for a dense model. The routed experts are split
into `ep` groups of `E / ep` whole experts (`ep` divides `tp` and the expert count), each expert
TP-sliced over the `tp / ep` GPUs of its group. `ep = 1` is vLLM's default (every expert sliced
over the TP group); `ep = tp` is vLLM's `--enable-expert-parallel` on one TP group (DP = 1):
each GPU holds `E / tp` whole experts. Memory per GPU is the same either way (routed experts /
tp, i.e. / ep when ep = tp, plus the TP-sliced rest); EP changes how the work moves.

Per MoE layer and step of T tokens (k = experts per token, E = routed experts):
- experts hit: `E * (1 - (1 - k / E) ** T)` in expectation under uniform, independent routing
  (`ModelSpec.num_experts_hit`); each GPU reads the weights of the ones it holds,
  `E / ep * (1 - (1 - k / E) ** T)` expert slices, once per step;
- expert compute: `T * k / ep` token-expert pairs per GPU, times `expert_imbalance` (the
  busiest GPU's load over the mean) when ep > 1: the step waits for the slowest GPU;
  `max(compute, weight reads + activations) + 2 grouped-GEMM launches`;
- the router (replicated, `h x E`) and the shared experts (TP-sliced) as ordinary projections;
- with ep > 1, an all-to-all dispatch and an all-to-all combine replace the MLP's all-reduce:
  each carries `T * k * h * dtype` bytes over the EP group, each GPU sending its `1 / tp`
  share of the tokens, of which `(ep - 1) / ep` leaves the GPU, over the intra-node link at
  its efficiency: `ALL_TO_ALL_LATENCY_S + T / tp * k * h * dtype * (ep - 1) / ep / link`.
  With tp / ep > 1 the group's partial sums are taken as reduced inside the combine.
Expert routing profiles (`StepShape.expert_mix`, Read-ME's scheduling). A request may carry
an `ExpertProfile` p (the share of its token-expert pairs each expert gets, one router for all
MoE layers as Read-ME's pre-gating router): each of its tokens then takes expert e with
probability q_e = min(1, c p_e), c set so the q_e sum to k (top-k picks distinct experts). An
expert stays unread in a step only if no token takes it: miss_e = (1 - k / E) ** T_u x prod
over profiled requests (1 - q_e) ** n, T_u the step's unprofiled tokens. Each GPU reads the
experts it holds times their hit probability, and does `T_u k / ep` (x `expert_imbalance`)
plus `sum n q_e` over its experts token-expert pairs; the step waits for the busiest GPU (the
profiles are the imbalance: the factor applies to unprofiled tokens only). A step without
profiles keeps the uniform formula bit for bit. A decode-only step with profiles is still
`step_time_s(context 0) + slope * context` bit for bit (the decode runs' line).
Not modelled: expert-count-dependent GEMM efficiency (small per-expert batches), routing
skew beyond the imbalance factor, DeepSeek's node-limited routing, FP8 dispatch, overlap of
the all-to-all with compute (DeepEP two-batch overlap).
"""

from __future__ import annotations

import math
from dataclasses import replace

from shunter.core.types import ExpertProfile, StepShape
from shunter.errors import ConfigError
from shunter.sim.cost.catalog import GpuSpec, ModelSpec, get_model
from shunter.sim.cost.roofline import (
    ATTENTION_DECODE_EFFICIENCY,
    DEFAULT_MAX_NUM_SEQS,
    KERNEL_FIXED_S,
    LOGITS_BYTES,
    RUNTIME_RESERVE_BYTES_PER_GPU,
    RooflineCostModel,
)

__all__ = ["ALL_TO_ALL_LATENCY_S", "DEFAULT_EXPERT_IMBALANCE", "MoeRooflineCostModel",
           "check_parallelism", "roofline_cost_model", "selection_probabilities"]

# Busiest GPU's token-expert pairs over the mean, under EP. 1.0 = perfectly balanced routing,
# what the uniform-routing hit formula assumes; real routers are skewed (DeepSeek-V3 runs a
# load balancer, EPLB, and auxiliary-loss-free balancing to keep it near 1), so the default is
# a neutral choice, not a measurement: set `expert_imbalance` per scenario.
DEFAULT_EXPERT_IMBALANCE = 1.0
# One all-to-all within a node: launch plus handshake. An estimate, not a measurement: set a
# little above the all-reduce floor (roofline.ALL_REDUCE_LATENCY_S), as each rank talks to all.
ALL_TO_ALL_LATENCY_S = 20e-6
ALL_TO_ALL_LATENCY_PER_RANK_S = 3e-6
NUM_MOE_KERNELS_PER_LAYER = 5  # router GEMM, top-k softmax, permute, unpermute, shared-expert mix
MAX_CACHED_PROFILES = 1 << 16  # per-profile routing terms kept (cleared past it: bounded memory)


def check_parallelism(model: ModelSpec, tp: int, ep: int, expert_imbalance: float) -> None:
    """ConfigError unless `ep` (and `expert_imbalance`) can run `model` on `tp` GPUs."""
    if ep < 1:
        raise ConfigError(f"ep must be >= 1, got {ep}")
    if not (math.isfinite(expert_imbalance) and expert_imbalance >= 1.0):
        raise ConfigError(f"expert_imbalance must be >= 1 (busiest GPU / mean), got "
                          f"{expert_imbalance}")
    if ep == 1:
        return
    if not model.is_moe:
        raise ConfigError(f"ep={ep} needs a mixture-of-experts model; {model.name} is dense")
    if ep > model.num_experts or model.num_experts % ep:
        raise ConfigError(f"ep={ep} must divide {model.name}'s {model.num_experts} routed experts")
    if tp % ep:
        raise ConfigError(f"ep={ep} must divide tp={tp}: the experts are split over the "
                          f"replica's tp GPUs")


def selection_probabilities(weights: tuple[float, ...], k: int) -> list[float]:
    """The probability that a token of a request with expert shares `weights` takes each
    expert, choosing `k` distinct ones: min(1, c w_e) with c such that they sum to k (experts
    capped at 1 pass their excess to the others; with fewer than k experts of weight > 0 the
    rest is spread evenly over the zero-weight ones)."""
    q = [0.0] * len(weights)
    free = [e for e in range(len(weights))]
    remaining = float(min(k, len(weights)))
    while free and remaining > 0:
        mass = math.fsum(weights[e] for e in free)
        if mass <= 0.0:
            for e in free:
                q[e] = remaining / len(free)
            break
        scale = remaining / mass
        capped = [e for e in free if scale * weights[e] >= 1.0]
        if not capped:
            for e in free:
                q[e] = scale * weights[e]
            break
        for e in capped:
            q[e] = 1.0
        remaining -= len(capped)
        free = [e for e in free if q[e] < 1.0]
    return q


def roofline_cost_model(model: ModelSpec | str, gpu: GpuSpec | str, tp: int = 1, *, ep: int = 1,
                        expert_imbalance: float = DEFAULT_EXPERT_IMBALANCE) -> RooflineCostModel:
    """The roofline model for `model`: the MoE one for a mixture of experts, else the dense one."""
    spec = get_model(model) if isinstance(model, str) else model
    if spec.is_moe:
        return MoeRooflineCostModel(spec, gpu, tp, ep=ep, expert_imbalance=expert_imbalance)
    check_parallelism(spec, tp, ep, expert_imbalance)
    return RooflineCostModel(spec, gpu, tp)


class MoeRooflineCostModel(RooflineCostModel):
    """RooflineCostModel with routed experts, expert parallelism and MLA (see module docstring)."""

    # folded by `_fold_coefficients` (defaults: always defined, as the compiled build wants)
    _moe_fixed_s: float = 0.0
    _experts_per_gpu: int = 0
    _pairs_per_token: float = 0.0
    _expert_s_per_pair: float = 0.0
    _expert_weights_s: float = 0.0
    _expert_io_s_per_pair: float = 0.0
    _a2a_latency_s: float = 0.0
    _a2a_s_per_token: float = 0.0

    def __init__(self, model: ModelSpec | str, gpu: GpuSpec | str, tp: int = 1, *, ep: int = 1,
                 expert_imbalance: float = DEFAULT_EXPERT_IMBALANCE) -> None:
        spec = get_model(model) if isinstance(model, str) else model
        if not spec.is_moe:
            raise ConfigError(f"{spec.name} is dense; use RooflineCostModel")
        check_parallelism(spec, tp, ep, expert_imbalance)
        self.ep = ep
        self.expert_imbalance = expert_imbalance
        # per expert profile: (log miss of one token per expert, token-expert pairs per GPU)
        self._profile_terms: dict[ExpertProfile, tuple[list[float], list[float]]] = {}
        super().__init__(spec, gpu, tp)

    def _fold_coefficients(self) -> None:
        super()._fold_coefficients()
        m, g, tp, ep = self.model, self.gpu, self.tp, self.ep
        dt, wdt, h = m.dtype_bytes, m.weight_dtype_bytes or m.dtype_bytes, m.hidden_size
        s_per_flop = 1.0 / (g.bf16_flops_s * g.compute_efficiency)
        s_per_byte = 1.0 / (g.memory_bandwidth_bytes_s * g.memory_efficiency)

        def linear(k: int, n: int) -> tuple[float, float, float]:
            return (2.0 * k * n * s_per_flop, k * n * wdt * s_per_byte, (k + n) * dt * s_per_byte)

        self._linear = tuple(linear(k, n) for k, n in self._attention_shapes())
        inter = m.intermediate_size // tp
        self._dense_mlp = (linear(h, 2 * inter), linear(inter, h))
        shared = m.num_shared_experts * m.expert_intermediate_size // tp
        self._moe_linear = (linear(h, m.num_experts),) + (
            (linear(h, 2 * shared), linear(shared, h)) if shared else ())
        self._moe_fixed_s = (NUM_MOE_KERNELS_PER_LAYER + 2) * KERNEL_FIXED_S
        # routed experts: per GPU, E / ep experts sliced tp / ep ways
        expert_inter = m.expert_intermediate_size // (tp // ep)
        expert_params = 3 * h * expert_inter
        self._experts_per_gpu = m.num_experts // ep
        self._pairs_per_token = m.num_experts_per_token / ep * (
            self.expert_imbalance if ep > 1 else 1.0)
        self._expert_s_per_pair = 2.0 * expert_params * s_per_flop
        self._expert_weights_s = expert_params * wdt * s_per_byte
        self._expert_io_s_per_pair = (2 * h + 3 * expert_inter) * dt * s_per_byte
        if m.is_mla:  # the latent KV, replicated on every TP rank
            self._kv_bytes_per_token_rank = (m.kv_lora_rank + m.qk_rope_head_dim) * dt
            self._prefill_s_per_kv_token = self._kv_bytes_per_token_rank * s_per_byte
            self._decode_s_per_kv_token = self._kv_bytes_per_token_rank / (
                g.memory_bandwidth_bytes_s * ATTENTION_DECODE_EFFICIENCY)
            self._decode_s_per_context_token = m.num_layers * self._decode_s_per_kv_token
        link = g.intra_node_bandwidth_bytes_s * g.intra_node_efficiency
        if ep > 1:  # the MoE layers' all-reduce becomes dispatch + combine
            self._num_all_reduces = 2 * m.num_dense_layers + m.num_moe_layers + 1
            self._a2a_latency_s = ALL_TO_ALL_LATENCY_S + ALL_TO_ALL_LATENCY_PER_RANK_S * ep
            self._a2a_s_per_token = (m.num_experts_per_token * h * dt * (ep - 1) / ep
                                     / tp / link)
        else:
            self._a2a_latency_s = self._a2a_s_per_token = 0.0

    def _attention_shapes(self) -> tuple[tuple[int, int], ...]:
        """(in, out) of each attention projection on one TP rank."""
        m, tp, h = self.model, self.tp, self.model.hidden_size
        heads = m.num_attention_heads // tp
        if not m.is_mla:
            kv_dim = self._kv_heads_per_rank * m.head_dim
            return ((h, heads * m.head_dim + 2 * kv_dim), (heads * m.head_dim, h))
        rope = m.qk_rope_head_dim
        return ((h, m.q_lora_rank + m.kv_lora_rank + rope),  # q_a and kv_a, replicated
                (m.q_lora_rank, heads * (m.head_dim + rope)),
                (m.kv_lora_rank, heads * 2 * m.head_dim),
                (heads * m.head_dim, h))

    # ---- per-operator times (per MoE layer, per GPU) --------------------------------------------

    def expert_time_s(self, num_tokens: int) -> float:
        """The routed experts of one MoE layer on the busiest GPU."""
        if num_tokens <= 0:
            return 0.0
        pairs = self._pairs_per_token * num_tokens
        compute_s = pairs * self._expert_s_per_pair
        memory_s = (self.expert_weight_read_time_s(num_tokens)
                    + pairs * self._expert_io_s_per_pair)
        return 2 * KERNEL_FIXED_S + max(compute_s, memory_s)

    def expert_weight_read_time_s(self, num_tokens: int) -> float:
        """Reading the weights of the routed experts a GPU holds that `num_tokens` tokens hit."""
        m = self.model
        miss = (1.0 - m.num_experts_per_token / m.num_experts) ** num_tokens
        return self._experts_per_gpu * (1.0 - miss) * self._expert_weights_s

    def all_to_all_time_s(self, num_tokens: int) -> float:
        """Dispatch plus combine of one MoE layer (0 without expert parallelism)."""
        if self.ep == 1 or num_tokens <= 0:
            return 0.0
        return 2.0 * (self._a2a_latency_s + self._a2a_s_per_token * num_tokens)

    def moe_layer_time_s(self, num_tokens: int) -> float:
        """One MoE layer's MLP part: router, shared experts, routed experts, all-to-all."""
        t = float(num_tokens)
        total = self._moe_fixed_s + self.expert_time_s(num_tokens)
        for compute_s, weights_s, io_s in self._moe_linear:
            total += max(compute_s * t, weights_s + io_s * t)
        return total + self.all_to_all_time_s(num_tokens)

    def dense_layer_time_s(self, num_tokens: int) -> float:
        """One dense layer's projections and element-wise kernels (attention projections plus
        the dense MLP; no attention kernel, no all-reduce)."""
        t = float(num_tokens)
        total = super().dense_layer_time_s(num_tokens)
        for compute_s, weights_s, io_s in self._dense_mlp:
            total += max(compute_s * t, weights_s + io_s * t)
        return total

    def _mlp_time_s(self, num_tokens: int) -> float:
        """Every layer's MLP part: the dense MLP of the leading dense layers, `moe_layer_time_s`
        of the rest (the base step adds this; its `_linear` holds the attention only)."""
        m, t = self.model, float(num_tokens)
        dense_s = 0.0
        for compute_s, weights_s, io_s in self._dense_mlp:
            dense_s += max(compute_s * t, weights_s + io_s * t)
        return m.num_dense_layers * dense_s + m.num_moe_layers * self.moe_layer_time_s(num_tokens)

    # ---- expert routing profiles (module docstring) -------------------------------------------

    def step_time_s(self, shape: StepShape) -> float:
        """The roofline step; with `expert_mix`, its routed experts as the profiles hit them."""
        mix = shape.expert_mix
        if not mix:
            return super().step_time_s(shape)
        num_tokens = shape.num_tokens
        time_s = super().step_time_s(replace(shape, num_decode_context_tokens=0, expert_mix=()))
        if num_tokens > 0:
            time_s += self.model.num_moe_layers * (self.routed_expert_time_s(num_tokens, mix)
                                                   - self.expert_time_s(num_tokens))
        if shape.num_decode_requests:
            time_s += self._decode_s_per_context_token * shape.num_decode_context_tokens
        return time_s

    def routed_expert_time_s(self, num_tokens: int,
                             mix: tuple[tuple[int, ExpertProfile], ...]) -> float:
        """`expert_time_s` of `num_tokens` tokens of which `mix` (tokens, profile) carry
        profiles; the rest are routed uniformly."""
        m, ep = self.model, self.ep
        num_experts, k = m.num_experts, m.num_experts_per_token
        num_uniform = num_tokens
        for n, _ in mix:
            num_uniform -= n
        num_uniform = max(num_uniform, 0)
        log_miss = [num_uniform * math.log1p(-k / num_experts)] * num_experts
        uniform_pairs = num_uniform * k / ep * (self.expert_imbalance if ep > 1 else 1.0)
        pairs = [uniform_pairs] * ep
        for n, profile in mix:
            token_log_miss, gpu_pairs = self._routing_terms(profile)
            for e in range(num_experts):
                log_miss[e] += n * token_log_miss[e]
            for g in range(ep):
                pairs[g] += n * gpu_pairs[g]
        per_gpu = num_experts // ep
        busiest_s = 0.0
        for g in range(ep):
            hit = 0.0
            for e in range(g * per_gpu, (g + 1) * per_gpu):
                hit += 1.0 - math.exp(log_miss[e])
            compute_s = pairs[g] * self._expert_s_per_pair
            memory_s = hit * self._expert_weights_s + pairs[g] * self._expert_io_s_per_pair
            busiest_s = max(busiest_s, compute_s, memory_s)
        return 2 * KERNEL_FIXED_S + busiest_s

    def _routing_terms(self, profile: ExpertProfile) -> tuple[list[float], list[float]]:
        """(log(1 - q_e) per expert, sum of q_e over each GPU's experts) of one profile."""
        terms = self._profile_terms.get(profile)
        if terms is not None:
            return terms
        m = self.model
        if len(profile.weights) != m.num_experts:
            raise ConfigError(f"an expert_profile has {len(profile.weights)} weights but "
                              f"{m.name} has {m.num_experts} routed experts")
        q = selection_probabilities(profile.weights, m.num_experts_per_token)
        token_log_miss = [math.log1p(-p) if p < 1.0 else -math.inf for p in q]
        per_gpu = m.num_experts // self.ep
        gpu_pairs = [math.fsum(q[g * per_gpu:(g + 1) * per_gpu]) for g in range(self.ep)]
        if len(self._profile_terms) >= MAX_CACHED_PROFILES:
            self._profile_terms.clear()
        terms = self._profile_terms[profile] = (token_log_miss, gpu_pairs)
        return terms

    # ---- memory -------------------------------------------------------------------------------

    def weight_bytes_per_gpu(self) -> int:
        """Weights on one GPU: routed experts / ep (each sliced tp / ep ways), router replicated,
        MLA's down-projections replicated, everything else / tp."""
        m, tp, ep, h = self.model, self.tp, self.ep, self.model.hidden_size
        attention = sum(k * n for k, n in self._attention_shapes())
        layer = attention + 2 * h
        dense_mlp = 3 * h * (m.intermediate_size // tp)
        shared = 3 * h * (m.num_shared_experts * m.expert_intermediate_size // tp)
        routed = m.num_experts // ep * 3 * h * (m.expert_intermediate_size // (tp // ep))
        moe_mlp = h * m.num_experts + shared + routed
        embed = m.vocab_size // tp * h * (1 if m.tie_word_embeddings else 2)
        params = (m.num_layers * layer + m.num_dense_layers * dense_mlp
                  + m.num_moe_layers * moe_mlp + embed + h)
        return int(params * (m.weight_dtype_bytes or m.dtype_bytes))

    def _kv_budget_bytes(self, utilization: float, max_num_batched_tokens: int) -> int:
        m, g, tp = self.model, self.gpu, self.tp
        dt, h = m.dtype_bytes, m.hidden_size
        weights = self.weight_bytes_per_gpu()
        widest = max(m.intermediate_size // tp, (m.num_experts_per_token * m.expert_intermediate_size
                                                 // (tp // self.ep)))
        activation_per_token = (4 * h + m.num_experts_per_token * h + 3 * widest
                                + sum(n for _, n in self._attention_shapes())) * dt
        reserve = (RUNTIME_RESERVE_BYTES_PER_GPU + max_num_batched_tokens * activation_per_token
                   + 2 * DEFAULT_MAX_NUM_SEQS * m.vocab_size // tp * LOGITS_BYTES)
        budget = int(g.memory_bytes * utilization)
        if budget - weights - reserve <= 0:
            gib = 1 << 30
            raise ConfigError(
                f"{m.name} does not fit on {tp} x {g.name} (ep={self.ep}): each GPU holds "
                f"{weights / gib:.1f} GiB of weights + {reserve / gib:.1f} GiB "
                f"activations/runtime, over its {budget / gib:.1f} GiB ({utilization:.0%} of "
                f"{g.memory_bytes / gib:.1f} GiB); use more GPUs (tp) or a larger GPU")
        return (budget - weights - reserve) * tp
