"""A minimal GGUF writer for tests: metadata, a byte-level BPE vocabulary, quantized tensors.

It quantizes the way llama.cpp lays blocks out (Q8_0, Q4_0, Q4_1: an f16 scale, for Q4_1 an f16
minimum, then the quants; 4-bit quants hold element j in the low nibble and j+16 in the high one)
and permutes Q/K rows the way llama.cpp's converter does.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import pre_tokenizers

GGML_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 8}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]
CHAT_TEMPLATE = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + "
                 "'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}"
                 "{{'<|im_start|>assistant\n'}}{% endif %}")


def byte_level_vocab() -> tuple[list[str], list[int]]:
    """Tokens (specials, 256 byte symbols, merge results) and their GGUF token types."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merged = [m.replace(" ", "") for m in MERGES]
    tokens = SPECIAL_TOKENS + alphabet + merged
    types = [3] * len(SPECIAL_TOKENS) + [1] * (len(alphabet) + len(merged))
    return tokens, types


def permute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute."""
    rows = weight.shape[0]
    return (weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def quantize(x: np.ndarray, kind: str) -> bytes:
    flat = x.astype(np.float32).reshape(-1)
    if kind == "F32":
        return flat.tobytes()
    if kind == "F16":
        return flat.astype(np.float16).tobytes()
    blocks = flat.reshape(-1, 32)
    if kind == "Q8_0":
        d = np.abs(blocks).max(axis=1, keepdims=True) / 127.0
        q = np.round(blocks / np.where(d == 0, 1, d)).astype(np.int8)
        return b"".join(d16.tobytes() + qs.tobytes() for d16, qs in zip(d.astype(np.float16), q, strict=True))
    if kind == "Q4_1":
        lo, hi = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
        d = (hi - lo) / 15.0
        q = np.clip(np.round((blocks - lo) / np.where(d == 0, 1, d)), 0, 15).astype(np.uint8)
        packed = q[:, :16] | (q[:, 16:] << 4)
        return b"".join(a.tobytes() + b.tobytes() + c.tobytes() for a, b, c in
                        zip(d.astype(np.float16), lo.astype(np.float16), packed, strict=True))
    if kind == "Q4_0":
        d = np.abs(blocks).max(axis=1, keepdims=True) / 7.0
        q = np.clip(np.round(blocks / np.where(d == 0, 1, d)) + 8, 0, 15).astype(np.uint8)
        packed = q[:, :16] | (q[:, 16:] << 4)
        return b"".join(a.tobytes() + c.tobytes() for a, c in zip(d.astype(np.float16), packed, strict=True))
    raise ValueError(kind)


def _string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(v: Any) -> bytes:
    if isinstance(v, bool):
        return struct.pack("<I?", 7, v)
    if isinstance(v, int):
        return struct.pack("<Ii", 5, v)
    if isinstance(v, float):
        return struct.pack("<If", 6, v)
    if isinstance(v, str):
        return struct.pack("<I", 8) + _string(v)
    if isinstance(v, list):
        if all(isinstance(x, str) for x in v):
            return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(_string(x) for x in v)
        return struct.pack("<IIQ", 9, 5, len(v)) + b"".join(struct.pack("<i", x) for x in v)
    raise TypeError(type(v))


def write_gguf(path: Path, metadata: dict[str, Any],
               tensors: dict[str, tuple[np.ndarray, str]], alignment: int = 32) -> Path:
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    header += b"".join(_string(k) + _value(v) for k, v in metadata.items())
    data, infos = b"", b""
    for name, (array, kind) in tensors.items():
        data += b"\0" * (-len(data) % alignment)
        dims = list(reversed(array.shape))
        infos += _string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        infos += struct.pack("<IQ", GGML_TYPES[kind], len(data))
        data += quantize(array, kind)
    head = header + infos
    path.write_bytes(head + b"\0" * (-len(head) % alignment) + data)
    return path


def _rope_theta(cfg: Any) -> float:
    """transformers 5 keeps it in rope_parameters; 4.x as a plain attribute."""
    params = getattr(cfg, "rope_parameters", None) or {}
    return params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))


def llama_gguf_from_hf(path: Path, hf_model: Any, types: dict[str, str] | None = None) -> Path:
    """Convert an HF LlamaForCausalLM (with the byte-level vocabulary) to GGUF like llama.cpp."""
    cfg = hf_model.config
    tokens, token_types = byte_level_vocab()
    assert cfg.vocab_size == len(tokens), "build the model with vocab_size=len(tokens)"
    meta: dict[str, Any] = {
        "general.architecture": "llama", "llama.block_count": cfg.num_hidden_layers,
        "llama.context_length": cfg.max_position_embeddings,
        "llama.embedding_length": cfg.hidden_size, "llama.feed_forward_length": cfg.intermediate_size,
        "llama.attention.head_count": cfg.num_attention_heads,
        "llama.attention.head_count_kv": cfg.num_key_value_heads,
        "llama.rope.freq_base": float(_rope_theta(cfg)),
        "llama.attention.layer_norm_rms_epsilon": float(cfg.rms_norm_eps),
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": token_types,
        "tokenizer.ggml.merges": MERGES, "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2, "tokenizer.chat_template": CHAT_TEMPLATE,
    }
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
             "output_norm.weight", "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj":
             "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    tensors = {}
    for hf_name, param in hf_model.state_dict().items():
        array = param.float().numpy()
        if hf_name.startswith("model.layers."):
            _, _, idx, rest = hf_name.split(".", 3)
            gguf_name = f"blk.{idx}.{layer[rest.removesuffix('.weight')]}.weight"
        else:
            gguf_name = names[hf_name]
        if gguf_name.endswith("attn_q.weight"):
            array = permute_rope_rows(array, cfg.num_attention_heads)
        elif gguf_name.endswith("attn_k.weight"):
            array = permute_rope_rows(array, cfg.num_key_value_heads)
        kind = "F32" if array.ndim == 1 else (types or {}).get(gguf_name.split(".")[-2], "F32")
        tensors[gguf_name] = (array, kind)
    return write_gguf(path, meta, tensors)
