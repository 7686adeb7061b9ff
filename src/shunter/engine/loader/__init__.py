"""Find and read model files: a named model, a local HF directory or a GGUF file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shunter.engine.loader.gguf import llama_tensors, read_gguf
from shunter.engine.loader.hf import read_json, read_safetensors_dir
from shunter.engine.loader.smollm2 import default_cache_dir, fetch_smollm2
from shunter.engine.model.config import LlamaConfig
from shunter.engine.tokenizer import Tokenizer
from shunter.errors import ModelError

__all__ = [
    "DEFAULT_MODEL",
    "NAMED_MODELS",
    "LoadedModel",
    "default_cache_dir",
    "load_gguf",
    "load_hf_dir",
    "load_model",
    "resolve_model_path",
]

DEFAULT_MODEL = "smollm2-135m"

# Short model names -> a function that returns the local file, fetching it if needed.
NAMED_MODELS: dict[str, Callable[[Path | None], Path]] = {
    "smollm2-135m": lambda cache_dir: fetch_smollm2(cache_dir),
}


@dataclass(slots=True, kw_only=True)
class LoadedModel:
    """A model's config, its weights under Hugging Face names, and its tokenizer."""

    config: LlamaConfig
    tensors: dict[str, torch.Tensor] = field(repr=False)
    tokenizer: Tokenizer | None
    source: Path


def resolve_model_path(model: str, cache_dir: Path | None = None) -> Path:
    """A named model's local file (fetched on first use), or `model` as a path."""
    if model in NAMED_MODELS:
        return NAMED_MODELS[model](cache_dir)
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelError(f"model {model!r} is neither a known name ({', '.join(NAMED_MODELS)}) "
                         "nor an existing file or directory")
    return path


def load_model(model: str, cache_dir: Path | None = None) -> LoadedModel:
    """Load a named model, a Hugging Face directory or a .gguf file."""
    path = resolve_model_path(model, cache_dir)
    return load_hf_dir(path) if path.is_dir() else load_gguf(path)


def load_hf_dir(directory: Path) -> LoadedModel:
    """config.json + *.safetensors (+ tokenizer.json, optional: tests use weights only)."""
    config = LlamaConfig.from_hf_dict(read_json(directory / "config.json"))
    tensors = read_safetensors_dir(directory)
    tokenizer = Tokenizer.from_hf_dir(directory) if (directory / "tokenizer.json").exists() else None
    return LoadedModel(config=config, tensors=tensors, tokenizer=tokenizer, source=directory)


def load_gguf(path: Path) -> LoadedModel:
    """A GGUF file, dequantized to float32, with the tokenizer it embeds."""
    gguf = read_gguf(path)
    config = LlamaConfig.from_gguf_metadata(gguf.metadata,
                                            has_output_weight="output.weight" in gguf.tensors)
    arrays = llama_tensors(gguf, num_heads=config.num_heads, num_kv_heads=config.num_kv_heads)
    tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    tokenizer = Tokenizer.from_gguf_metadata(gguf.metadata) if "tokenizer.ggml.model" in \
        gguf.metadata else None
    return LoadedModel(config=config, tensors=tensors, tokenizer=tokenizer, source=path)
