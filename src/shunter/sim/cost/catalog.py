"""GPUs and models the cost models know, under the names users type (`--gpu h100 --model llama-3.1-8b`).

GPUs are in `shunter.sim.cost.gpus` (re-exported here).

Model figures are the `config.json` values of the Hugging Face checkpoints. The Llama-style shape
is modelled (GQA attention, gated SiLU MLP, RMSNorm), optionally with mixture-of-experts MLPs
(routed experts picked top-k per token, shared experts, leading dense layers) and DeepSeek's
multi-head latent attention (MLA); QKV biases (Qwen2.5) and sliding windows (Mistral-7B v0.1,
gpt-oss) are noted in the entry but ignored by the cost models.
"""

from __future__ import annotations

from dataclasses import dataclass

from shunter.sim.cost.gpus import GPU_ALIASES, GPUS, GpuSpec, get_gpu, lookup

__all__ = [
    "GPUS",
    "GPU_ALIASES",
    "MODELS",
    "MODEL_ALIASES",
    "GpuSpec",
    "ModelSpec",
    "get_gpu",
    "get_model",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """A decoder-only transformer as its config.json describes it: dense, or mixture-of-experts
    when `num_experts` > 0 (every layer after the first `num_dense_layers` replaces its MLP by
    a router, `num_shared_experts` always-on experts and `num_experts` routed experts of
    `expert_intermediate_size`, `num_experts_per_token` of them per token)."""

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int  # of the dense MLP (MoE models: of their leading dense layers)
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_model_len: int  # context length (max_position_embeddings)
    dtype_bytes: int = 2  # bf16 weights and KV cache
    tie_word_embeddings: bool = False
    sliding_window: int | None = None  # noted only; the cost models treat attention as full
    # mixture of experts (0: dense)
    num_experts: int = 0  # routed experts per MoE layer
    num_experts_per_token: int = 0  # top-k
    expert_intermediate_size: int = 0
    num_shared_experts: int = 0  # each of expert_intermediate_size
    num_dense_layers: int = 0  # leading layers with a dense MLP (DeepSeek first_k_dense_replace)
    # multi-head latent attention (0: GQA); head_dim is then qk_nope_head_dim = v_head_dim
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    weight_dtype_bytes: int | None = None  # None: dtype_bytes (FP8 checkpoints: 1)
    note: str = ""

    def __post_init__(self) -> None:
        moe = (self.num_experts, self.num_experts_per_token, self.expert_intermediate_size)
        if any(moe) and not (all(moe) and self.num_experts_per_token <= self.num_experts):
            raise ValueError(f"model {self.name}: a MoE model needs num_experts >= "
                             f"num_experts_per_token >= 1 and an expert_intermediate_size")
        if not 0 <= self.num_dense_layers <= self.num_layers:
            raise ValueError(f"model {self.name}: num_dense_layers must be in [0, num_layers]")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers if self.is_moe else 0

    @property
    def num_attention_params_per_layer(self) -> int:
        h, q_dim = self.hidden_size, self.num_attention_heads * self.head_dim
        if not self.is_mla:
            kv_dim = self.num_kv_heads * self.head_dim
            return h * (q_dim + 2 * kv_dim) + q_dim * h
        heads, rope = self.num_attention_heads, self.qk_rope_head_dim
        q_a = h * self.q_lora_rank + self.q_lora_rank  # + q_a_layernorm
        q_b = self.q_lora_rank * heads * (self.head_dim + rope)
        kv_a = h * (self.kv_lora_rank + rope) + self.kv_lora_rank  # + kv_a_layernorm
        kv_b = self.kv_lora_rank * heads * 2 * self.head_dim  # K nope and V
        return q_a + q_b + kv_a + kv_b + q_dim * h

    @property
    def num_expert_params(self) -> int:
        """One expert's gated MLP (gate, up, down)."""
        return 3 * self.hidden_size * self.expert_intermediate_size

    @property
    def num_params_per_layer(self) -> int:
        """A dense layer: attention, MLP and two RMSNorm weights."""
        mlp = 3 * self.hidden_size * self.intermediate_size
        return self.num_attention_params_per_layer + mlp + 2 * self.hidden_size

    def num_moe_mlp_params(self, num_routed: float) -> float:
        """One MoE layer's router, shared experts and `num_routed` routed experts."""
        router = self.hidden_size * self.num_experts
        return router + (self.num_shared_experts + num_routed) * self.num_expert_params

    def num_experts_hit(self, num_tokens: int) -> float:
        """Expected distinct routed experts a step of `num_tokens` tokens touches in one MoE layer
        under uniform, independent routing: `E * (1 - (1 - k / E) ** T)` (one token misses a
        given expert with probability 1 - k/E); k at T = 1, towards E as T grows."""
        e, k = self.num_experts, self.num_experts_per_token
        return e * (1.0 - (1.0 - k / e) ** num_tokens) if num_tokens > 0 else 0.0

    def num_active_params(self, num_tokens: int = 1) -> float:
        """Parameters a step of `num_tokens` tokens computes with (and reads): everything but an
        untied input embedding table (a gather) and the routed experts no token picked
        (`num_experts_hit`). At one token, the published "active parameters"."""
        embeddings = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        non_expert = self.num_params - embeddings
        if not self.is_moe:
            return float(non_expert)
        unused = self.num_experts - self.num_experts_hit(num_tokens)
        return non_expert - self.num_moe_layers * unused * self.num_expert_params

    @property
    def num_params(self) -> int:
        """All parameters (what the weights occupy)."""
        embeddings = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tie_word_embeddings else embeddings
        if not self.is_moe:
            return (self.num_layers * self.num_params_per_layer + embeddings + lm_head
                    + self.hidden_size)
        h = self.hidden_size
        dense = self.num_dense_layers * 3 * h * self.intermediate_size
        moe = self.num_moe_layers * int(self.num_moe_mlp_params(self.num_experts))
        layers = self.num_layers * (self.num_attention_params_per_layer + 2 * h)
        return layers + dense + moe + embeddings + lm_head + h

    @property
    def weight_bytes(self) -> int:
        return int(self.num_params * (self.weight_dtype_bytes or self.dtype_bytes))

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers, unsharded (MLA: its compressed latent)."""
        if self.is_mla:
            return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * self.dtype_bytes
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


# Values from each checkpoint's config.json on the Hugging Face hub.
MODELS: dict[str, ModelSpec] = {
    "llama-3.1-8b": ModelSpec(
        name="llama-3.1-8b", num_layers=32, hidden_size=4096, intermediate_size=14336,
        num_attention_heads=32, num_kv_heads=8, head_dim=128, vocab_size=128256,
        max_model_len=131072),
    "llama-3.1-70b": ModelSpec(
        name="llama-3.1-70b", num_layers=80, hidden_size=8192, intermediate_size=28672,
        num_attention_heads=64, num_kv_heads=8, head_dim=128, vocab_size=128256,
        max_model_len=131072),
    "llama-3-8b": ModelSpec(
        name="llama-3-8b", num_layers=32, hidden_size=4096, intermediate_size=14336,
        num_attention_heads=32, num_kv_heads=8, head_dim=128, vocab_size=128256,
        max_model_len=8192),
    "llama-3-70b": ModelSpec(
        name="llama-3-70b", num_layers=80, hidden_size=8192, intermediate_size=28672,
        num_attention_heads=64, num_kv_heads=8, head_dim=128, vocab_size=128256,
        max_model_len=8192),
    "llama-2-70b": ModelSpec(
        name="llama-2-70b", num_layers=80, hidden_size=8192, intermediate_size=28672,
        num_attention_heads=64, num_kv_heads=8, head_dim=128, vocab_size=32000,
        max_model_len=4096),
    "llama-2-7b": ModelSpec(
        name="llama-2-7b", num_layers=32, hidden_size=4096, intermediate_size=11008,
        num_attention_heads=32, num_kv_heads=32, head_dim=128, vocab_size=32000,
        max_model_len=4096),
    # The papers' older models. LLaMA (v1) is the Llama-2 shape with a 2048-token context.
    "llama-7b": ModelSpec(
        name="llama-7b", num_layers=32, hidden_size=4096, intermediate_size=11008,
        num_attention_heads=32, num_kv_heads=32, head_dim=128, vocab_size=32000,
        max_model_len=2048),
    "llama-30b": ModelSpec(
        name="llama-30b", num_layers=60, hidden_size=6656, intermediate_size=17920,
        num_attention_heads=52, num_kv_heads=52, head_dim=128, vocab_size=32000,
        max_model_len=2048),
    # OPT (facebook/opt-*): multi-head attention and a two-matrix ReLU MLP of ffn_dim = 4 x hidden.
    # Entered with the gated-MLP intermediate size that has the same parameters and FLOPs
    # (3 h i = 2 h ffn_dim, i = 2 ffn_dim / 3; OPT-13B rounds it); biases, LayerNorm's and the
    # 2048 learned position embeddings are left out (< 0.2% of parameters).
    "opt-13b": ModelSpec(
        name="opt-13b", num_layers=40, hidden_size=5120, intermediate_size=13653,
        num_attention_heads=40, num_kv_heads=40, head_dim=128, vocab_size=50272,
        max_model_len=2048, tie_word_embeddings=True,
        note="ReLU MLP (ffn_dim 20480) entered as the gated MLP of equal FLOPs"),
    "opt-66b": ModelSpec(
        name="opt-66b", num_layers=64, hidden_size=9216, intermediate_size=24576,
        num_attention_heads=72, num_kv_heads=72, head_dim=128, vocab_size=50272,
        max_model_len=2048, tie_word_embeddings=True,
        note="ReLU MLP (ffn_dim 36864) entered as the gated MLP of equal FLOPs"),
    "opt-175b": ModelSpec(
        name="opt-175b", num_layers=96, hidden_size=12288, intermediate_size=32768,
        num_attention_heads=96, num_kv_heads=96, head_dim=128, vocab_size=50272,
        max_model_len=2048, tie_word_embeddings=True,
        note="ReLU MLP (ffn_dim 49152) entered as the gated MLP of equal FLOPs"),
    "qwen2.5-7b": ModelSpec(
        name="qwen2.5-7b", num_layers=28, hidden_size=3584, intermediate_size=18944,
        num_attention_heads=28, num_kv_heads=4, head_dim=128, vocab_size=152064,
        max_model_len=32768, note="QKV projections carry biases (ignored: <0.01% of FLOPs)"),
    "mistral-7b": ModelSpec(
        name="mistral-7b", num_layers=32, hidden_size=4096, intermediate_size=14336,
        num_attention_heads=32, num_kv_heads=8, head_dim=128, vocab_size=32000,
        max_model_len=32768, sliding_window=4096,
        note="v0.1 attends within a 4096-token sliding window; modelled as full attention"),
    # meta-llama/Llama-3.2-1B config.json; the Llama-3 family's draft model for speculative
    # decoding (same 128256-token vocabulary as Llama-3/3.1)
    "llama-3.2-1b": ModelSpec(
        name="llama-3.2-1b", num_layers=16, hidden_size=2048, intermediate_size=8192,
        num_attention_heads=32, num_kv_heads=8, head_dim=64, vocab_size=128256,
        max_model_len=131072, tie_word_embeddings=True),
    "smollm2-135m": ModelSpec(
        name="smollm2-135m", num_layers=30, hidden_size=576, intermediate_size=1536,
        num_attention_heads=9, num_kv_heads=3, head_dim=64, vocab_size=49152,
        max_model_len=8192, tie_word_embeddings=True),
    # Mixture of experts. mistralai/Mixtral-8x7B-v0.1 config.json: num_local_experts 8,
    # num_experts_per_tok 2, intermediate_size 14336 (per expert), rope_theta 1e6,
    # sliding_window null. 46.70B parameters, 12.75B active (12.9B published, which counts the
    # input embedding too).
    "mixtral-8x7b": ModelSpec(
        name="mixtral-8x7b", num_layers=32, hidden_size=4096, intermediate_size=14336,
        num_attention_heads=32, num_kv_heads=8, head_dim=128, vocab_size=32000,
        max_model_len=32768, num_experts=8, num_experts_per_token=2,
        expert_intermediate_size=14336),
    # deepseek-ai/DeepSeek-V3 config.json: num_hidden_layers 61, hidden_size 7168,
    # intermediate_size 18432 (the first_k_dense_replace = 3 dense layers), n_routed_experts 256,
    # num_experts_per_tok 8, moe_intermediate_size 2048, n_shared_experts 1, 128 heads,
    # q_lora_rank 1536, kv_lora_rank 512, qk_nope_head_dim 128, qk_rope_head_dim 64,
    # v_head_dim 128, vocab_size 129280, max_position_embeddings 163840. Approximations: MLA's
    # projections are counted exactly, but its KV cache is the compressed latent (512 + 64 per
    # token and layer, replicated over TP ranks as in vLLM) and its attention kernel is priced
    # as GQA over 128 heads of 128; group-limited routing (n_group 8, topk_group 4) is taken as
    # uniform; the multi-token-prediction layer (num_nextn_predict_layers 1, ~14B of the hub's
    # 685B) is left out. Weights are the release's block-scaled FP8 (1 byte; scales ignored);
    # KV and activations bf16. 671.0B parameters, 36.6B active (671B / 37B published).
    "deepseek-v3": ModelSpec(
        name="deepseek-v3", num_layers=61, hidden_size=7168, intermediate_size=18432,
        num_attention_heads=128, num_kv_heads=128, head_dim=128, vocab_size=129280,
        max_model_len=163840, num_experts=256, num_experts_per_token=8,
        expert_intermediate_size=2048, num_shared_experts=1, num_dense_layers=3,
        q_lora_rank=1536, kv_lora_rank=512, qk_rope_head_dim=64, weight_dtype_bytes=1,
        note="MLA approximated (latent KV cache, GQA-priced attention kernel); FP8 weights"),
    # openai/gpt-oss-120b config.json: num_hidden_layers 36, hidden_size 2880,
    # intermediate_size 2880 (per expert), num_local_experts 128, num_experts_per_tok 4,
    # 64 heads / 8 KV heads of head_dim 64, vocab_size 201088, max_position_embeddings 131072,
    # sliding_window 128 on every other layer (layer_types alternate sliding / full).
    # Attention biases and per-head sinks are ignored (< 0.1% of parameters). The release
    # stores the experts in MXFP4 (~4.25 bits); they are counted here as bf16, so memory and
    # expert weight reads are ~3.8x too high. 116.8B parameters, 5.13B active (116.83B /
    # 5.13B published).
    "gpt-oss-120b": ModelSpec(
        name="gpt-oss-120b", num_layers=36, hidden_size=2880, intermediate_size=2880,
        num_attention_heads=64, num_kv_heads=8, head_dim=64, vocab_size=201088,
        max_model_len=131072, sliding_window=128, num_experts=128, num_experts_per_token=4,
        expert_intermediate_size=2880,
        note="half the layers attend within a 128-token sliding window; modelled as full "
             "attention; MXFP4 experts counted as bf16"),
}

MODEL_ALIASES: dict[str, str] = {
    "llama3.1-8b": "llama-3.1-8b", "llama-3.1-8b-instruct": "llama-3.1-8b",
    "meta-llama-3.1-8b": "llama-3.1-8b", "meta-llama-3.1-8b-instruct": "llama-3.1-8b",
    "llama3.1-70b": "llama-3.1-70b", "llama-3.1-70b-instruct": "llama-3.1-70b",
    "meta-llama-3.1-70b": "llama-3.1-70b", "meta-llama-3.1-70b-instruct": "llama-3.1-70b",
    "meta-llama-3-8b": "llama-3-8b", "llama3-8b": "llama-3-8b",
    "meta-llama-3-70b": "llama-3-70b", "llama3-70b": "llama-3-70b",
    "llama-2-70b-hf": "llama-2-70b", "llama-2-70b-chat-hf": "llama-2-70b", "llama2-70b": "llama-2-70b",
    "llama-2-7b-hf": "llama-2-7b", "llama-2-7b-chat-hf": "llama-2-7b", "llama2-7b": "llama-2-7b",
    "qwen2.5-7b-instruct": "qwen2.5-7b",
    "llama-7b-hf": "llama-7b", "llama1-7b": "llama-7b", "llama-30b-hf": "llama-30b",
    "llama1-30b": "llama-30b", "llama-33b": "llama-30b",
    "mistral-7b-v0.1": "mistral-7b", "mistral-7b-instruct-v0.1": "mistral-7b",
    "smollm2-135m-instruct": "smollm2-135m",
    "llama-3.2-1b-instruct": "llama-3.2-1b", "meta-llama-3.2-1b": "llama-3.2-1b",
    "mixtral-8x7b-v0.1": "mixtral-8x7b", "mixtral-8x7b-instruct-v0.1": "mixtral-8x7b",
    "deepseek-v3-base": "deepseek-v3", "deepseek-v3-0324": "deepseek-v3",
}


def get_model(name: str) -> ModelSpec:
    """The model called `name` (case-insensitive; Hugging Face ids like `meta-llama/Llama-2-7b-hf` work)."""
    return lookup("model", name, MODELS, MODEL_ALIASES)
