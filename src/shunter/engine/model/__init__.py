"""The Llama-family model: config, forward pass over a paged KV cache, weight loading."""

from __future__ import annotations

from shunter.engine.model.attention import AttentionMetadata, PrefillSegment
from shunter.engine.model.config import LlamaConfig
from shunter.engine.model.llama import KVCache, LlamaForCausalLM
from shunter.engine.model.weights import build_llama, load_llama_weights

__all__ = [
    "AttentionMetadata",
    "KVCache",
    "LlamaConfig",
    "LlamaForCausalLM",
    "PrefillSegment",
    "build_llama",
    "load_llama_weights",
]
