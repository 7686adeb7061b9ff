"""The shape of a Llama-family model, read from a Hugging Face config.json or GGUF metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shunter.errors import ModelError

__all__ = ["SUPPORTED_ROPE_TYPES", "LlamaConfig"]

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
LLAMA_ARCHITECTURES = ("llama", "mistral")  # same forward pass (Mistral without sliding window)


@dataclass(frozen=True, slots=True, kw_only=True)
class LlamaConfig:
    """Everything the forward pass needs; `rope_scaling` holds the HF rope parameters."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] = field(default_factory=dict)
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ModelError(f"model config: {name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ModelError(f"model config: {self.num_heads} attention heads are not a multiple "
                             f"of {self.num_kv_heads} KV heads")
        if self.head_dim % 2:
            raise ModelError(f"model config: head_dim must be even for RoPE, got {self.head_dim}")
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ModelError(f"model config: rope type {self.rope_type!r} is not supported; "
                             f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")

    @property
    def rope_type(self) -> str:
        return str(self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default")))

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any]) -> LlamaConfig:
        """Build from a Hugging Face config.json (transformers 4 or 5 rope layout)."""
        model_type = raw.get("model_type", "llama")
        if model_type not in LLAMA_ARCHITECTURES:
            raise ModelError(f"config.json: model_type {model_type!r} is not a Llama-family model; "
                             f"supported: {', '.join(LLAMA_ARCHITECTURES)}")
        if raw.get("attention_bias") or raw.get("mlp_bias"):
            raise ModelError("config.json: attention/MLP biases are not supported")
        try:
            num_heads = int(raw["num_attention_heads"])
            hidden = int(raw["hidden_size"])
            rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
            theta = float(rope.pop("rope_theta", raw.get("rope_theta", 10000.0)))
            return cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_layers=int(raw["num_hidden_layers"]),
                num_heads=num_heads,
                num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
                head_dim=int(raw.get("head_dim") or hidden // num_heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
                rope_theta=theta,
                rope_scaling=rope,
                max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"config.json: missing or invalid field: {exc}") from exc

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any], *, has_output_weight: bool) -> LlamaConfig:
        """Build from GGUF key/values (`llama.*`)."""
        arch = meta.get("general.architecture")
        if arch not in LLAMA_ARCHITECTURES:
            raise ModelError(f"GGUF architecture {arch!r} is not supported; "
                             f"supported: {', '.join(LLAMA_ARCHITECTURES)}")
        try:
            hidden = int(meta[f"{arch}.embedding_length"])
            num_heads = int(meta[f"{arch}.attention.head_count"])
            rope: dict[str, Any] = {}
            scaling = meta.get(f"{arch}.rope.scaling.type")
            if scaling == "linear":
                rope = {"rope_type": "linear", "factor": float(meta[f"{arch}.rope.scaling.factor"])}
            elif scaling not in (None, "none"):
                raise ModelError(f"GGUF rope scaling {scaling!r} is not supported")
            vocab = meta.get(f"{arch}.vocab_size") or len(meta["tokenizer.ggml.tokens"])
            return cls(
                vocab_size=int(vocab),
                hidden_size=hidden,
                intermediate_size=int(meta[f"{arch}.feed_forward_length"]),
                num_layers=int(meta[f"{arch}.block_count"]),
                num_heads=num_heads,
                num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", num_heads)),
                head_dim=int(meta.get(f"{arch}.attention.key_length", hidden // num_heads)),
                rms_norm_eps=float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
                rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
                rope_scaling=rope,
                max_position_embeddings=int(meta.get(f"{arch}.context_length", 2048)),
                tie_word_embeddings=not has_output_weight,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"GGUF metadata: missing or invalid field: {exc}") from exc
