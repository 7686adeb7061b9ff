"""Rotary position embeddings (RoPE) with the scalings Llama-family models ship.

Frequencies follow Hugging Face's `modeling_rope_utils` so that the engine and the reference
model agree to float precision; cos/sin are tabled once per model up to its context length.
"""

from __future__ import annotations

import math

import torch

from shunter.engine.model.config import LlamaConfig

__all__ = ["RotaryEmbedding", "inverse_frequencies"]


def inverse_frequencies(config: LlamaConfig) -> torch.Tensor:
    """Per-pair rotation frequencies, after the model's rope scaling."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    params = config.rope_scaling
    match config.rope_type:
        case "default":
            return inv_freq
        case "linear":
            return inv_freq / float(params["factor"])
        case "llama3":
            return _llama3_frequencies(inv_freq, params)
    raise AssertionError(f"unvalidated rope type {config.rope_type}")


def _llama3_frequencies(inv_freq: torch.Tensor, params: dict) -> torch.Tensor:
    factor = float(params["factor"])
    low_freq_factor = float(params["low_freq_factor"])
    high_freq_factor = float(params["high_freq_factor"])
    old_context_len = float(params["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(torch.nn.Module):
    """Rotates q and k by position, in the half-split layout of Hugging Face checkpoints."""

    def __init__(self, config: LlamaConfig, max_positions: int) -> None:
        super().__init__()
        inv_freq = inverse_frequencies(config)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_table", emb.cos(), persistent=False)
        self.register_buffer("sin_table", emb.sin(), persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for each token, shaped [num_tokens, 1, head_dim] to broadcast over heads."""
        cos = self.cos_table.index_select(0, positions).to(dtype).unsqueeze(1)
        sin = self.sin_table.index_select(0, positions).to(dtype).unsqueeze(1)
        return cos, sin

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [num_tokens, num_heads, head_dim]."""
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin
