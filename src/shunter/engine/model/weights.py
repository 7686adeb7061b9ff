"""Copy checkpoint tensors (Hugging Face names) into the engine's fused Llama modules."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from shunter.engine.model.config import LlamaConfig
from shunter.engine.model.llama import LlamaForCausalLM
from shunter.engine.model.packed import can_pack, pack_linears
from shunter.errors import ModelError

__all__ = ["build_llama", "load_llama_weights"]


def build_llama(config: LlamaConfig, tensors: Mapping[str, torch.Tensor], *, max_positions: int,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                pack_weights: bool = True) -> LlamaForCausalLM:
    """A ready-to-run model in eval mode: built on `device`, weights cast to `dtype`.

    With `pack_weights`, bfloat16 CPU models get oneDNN-prepacked linear layers.
    """
    with torch.device(device):
        model = LlamaForCausalLM(config, max_positions)
    model.to(dtype=dtype)
    model.rotary.float()  # cos/sin tables stay float32; they are cast per step
    load_llama_weights(model, tensors)
    model.eval().requires_grad_(False)
    if pack_weights and can_pack(torch.device(device), dtype):
        pack_linears(model)
    return model


def load_llama_weights(model: LlamaForCausalLM, tensors: Mapping[str, torch.Tensor]) -> None:
    """Fill `model` from HF-named tensors; missing or mis-shaped tensors raise ModelError."""

    def take(name: str) -> torch.Tensor:
        if name not in tensors:
            raise ModelError(f"checkpoint has no tensor {name!r}")
        return tensors[name]

    with torch.no_grad():
        _copy(model.embed_tokens.weight, take("model.embed_tokens.weight"), "model.embed_tokens")
        _copy(model.norm.weight, take("model.norm.weight"), "model.norm")
        if not model.config.tie_word_embeddings:
            _copy(model.lm_head.weight, take("lm_head.weight"), "lm_head")
        for i, layer in enumerate(model.layers):
            p = f"model.layers.{i}."
            _copy(layer.input_layernorm.weight, take(p + "input_layernorm.weight"), p)
            _copy(layer.post_attention_layernorm.weight,
                  take(p + "post_attention_layernorm.weight"), p)
            qkv = [take(p + f"self_attn.{n}_proj.weight") for n in ("q", "k", "v")]
            _copy(layer.qkv_proj.weight, torch.cat(qkv, dim=0), p + "self_attn.qkv")
            _copy(layer.o_proj.weight, take(p + "self_attn.o_proj.weight"), p + "self_attn.o")
            gate_up = [take(p + f"mlp.{n}_proj.weight") for n in ("gate", "up")]
            _copy(layer.gate_up_proj.weight, torch.cat(gate_up, dim=0), p + "mlp.gate_up")
            _copy(layer.down_proj.weight, take(p + "mlp.down_proj.weight"), p + "mlp.down")


def _copy(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if tuple(dst.shape) != tuple(src.shape):
        raise ModelError(f"checkpoint tensor {name}: shape {tuple(src.shape)}, "
                         f"the model config needs {tuple(dst.shape)}")
    dst.copy_(src.to(dst.dtype))
