"""A tiny random-weight Llama, saved as a Hugging Face directory, and its HF reference model."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

TINY_CONFIG = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
    rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
)
WEIGHT_STD = 0.15  # large enough that greedy choices are far from ties


def make_tiny_hf_model(seed: int = 0, **overrides: object) -> transformers.LlamaForCausalLM:
    """HF LlamaForCausalLM (eager attention, float32) with seeded random weights."""
    config = transformers.LlamaConfig(**{**TINY_CONFIG, **overrides})
    config._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(WEIGHT_STD * torch.randn(param.shape, generator=gen))
    return model


def save_tiny_hf_dir(model: transformers.LlamaForCausalLM, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path


def reference_logits(model: transformers.LlamaForCausalLM, token_ids: list[int]) -> torch.Tensor:
    """Unbatched, unpaged reference: logits [len(token_ids), vocab] of one full forward."""
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()


def reference_greedy(model: transformers.LlamaForCausalLM, prompt: list[int],
                     num_tokens: int) -> list[int]:
    """Greedy continuation by the reference model, one full forward per token."""
    ids = list(prompt)
    for _ in range(num_tokens):
        ids.append(int(reference_logits(model, ids)[-1].argmax()))
    return ids[len(prompt):]
