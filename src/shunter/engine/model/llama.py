"""The Llama forward pass (RMSNorm, RoPE, GQA, SwiGLU), written for a paged KV cache.

The model is stateless: the runner hands it flattened token ids and positions of a whole mixed
step, the per-layer cache tensors and the step's attention metadata. Q/K/V and gate/up are
fused into one matmul each (fewer, larger matmuls are what a CPU is fast at).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shunter.engine.model.attention import AttentionMetadata, paged_attention, write_kv
from shunter.engine.model.config import LlamaConfig
from shunter.engine.model.packed import linear
from shunter.engine.model.rope import RotaryEmbedding

__all__ = ["KVCache", "LlamaDecoderLayer", "LlamaForCausalLM", "RMSNorm"]

KVCache = tuple[torch.Tensor, torch.Tensor]  # K and V: [num_blocks, kv_heads, block_size, head_dim]


class RMSNorm(nn.Module):
    """Root-mean-square norm, rounded as Hugging Face's LlamaRMSNorm rounds it.

    The reference normalizes in float32, casts to the model dtype, then multiplies by the weight
    in the model dtype: two roundings. A fused kernel with the weight rounds once, which in
    bfloat16 moves about a quarter of the outputs by an ulp. Neither is more accurate by much,
    but over 30 layers the difference flips near-tied greedy tokens (issue 17: the reference
    says "Paris", the engine said "L'Étoile"). The fused norm without weight, then the weight
    multiply, gives the reference's bits (and is no slower).
    """

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm accumulates in float32 as the reference's explicit upcast does.
        return F.rms_norm(x, self.weight.shape, None, self.eps) * self.weight


class LlamaDecoderLayer(nn.Module):
    """One transformer block: attention over the paged cache, then the SwiGLU MLP."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = config.num_heads * config.head_dim
        self.kv_size = config.num_kv_heads * config.head_dim
        self.scale = config.head_dim ** -0.5
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=False)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache,
                meta: AttentionMetadata) -> torch.Tensor:
        num_tokens = x.shape[0]
        exact = not meta.has_decodes  # see packed.py: steps with decodes need not be
        qkv = linear(self.qkv_proj, self.input_layernorm(x), exact)
        # q and k sit side by side in qkv: rotate both heads' blocks in one pass.
        qk = qkv[:, :self.q_size + self.kv_size].view(num_tokens, -1, self.head_dim)
        q, k = RotaryEmbedding.apply(qk, cos, sin).split((self.num_heads, self.num_kv_heads), dim=1)
        v = qkv[:, self.q_size + self.kv_size:].reshape(num_tokens, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = cache
        write_kv(k_cache, v_cache, k, v, meta.kv_rows)
        attn = paged_attention(q, k, v, k_cache, v_cache, meta, self.scale)
        x = x + linear(self.o_proj, attn.reshape(num_tokens, self.q_size), exact)
        gate, up = linear(self.gate_up_proj, self.post_attention_layernorm(x), exact).chunk(2, dim=-1)
        return x + linear(self.down_proj, F.silu(gate) * up, exact)


class LlamaForCausalLM(nn.Module):
    """Embeddings, decoder layers, final norm and LM head (tied or untied)."""

    def __init__(self, config: LlamaConfig, max_positions: int) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config, max_positions)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, caches: list[KVCache],
                meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [num_tokens, hidden_size] after the final norm."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary.cos_sin(positions, x.dtype)
        for layer, cache in zip(self.layers, caches, strict=True):
            x = layer(x, cos, sin, cache, meta)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor, exact: bool = True) -> torch.Tensor:
        """Float32 logits [num_rows, vocab_size] (`exact`: see packed.py)."""
        return linear(self.lm_head, hidden, exact).float()
