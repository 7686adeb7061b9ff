"""Read a local Hugging Face model directory: config.json, *.safetensors, tokenizer files.

Safetensors is read directly (an 8-byte header length, a JSON header, raw little-endian data),
so the engine needs no extra package for it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shunter.errors import ModelError

__all__ = ["read_json", "read_safetensors", "read_safetensors_dir"]

_DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "F32": (np.dtype("<f4"), torch.float32),
    "F16": (np.dtype("<f2"), torch.float16),
    "BF16": (np.dtype("<u2"), torch.bfloat16),  # numpy has no bfloat16: read bits, view in torch
    "F64": (np.dtype("<f8"), torch.float64),
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; ModelError if it is missing or malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"model file missing: {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor in one .safetensors file, as CPU tensors of their stored dtype."""
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    if len(data) < 8:
        raise ModelError(f"{path}: not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", bytes(data[:8]))
    if header_len > min(_MAX_HEADER_BYTES, len(data) - 8):
        raise ModelError(f"{path}: not a safetensors file (bad header length)")
    try:
        header = json.loads(bytes(data[8:8 + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: corrupt safetensors header: {exc}") from exc
    base = 8 + header_len
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in _DTYPES:
            raise ModelError(f"{path}: tensor {name} has dtype {info.get('dtype')}, supported: "
                             f"{', '.join(_DTYPES)}")
        np_dtype, torch_dtype = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        if base + end > len(data):
            raise ModelError(f"{path}: tensor {name} runs past the end of the file")
        array = np.array(data[base + begin:base + end]).view(np_dtype)
        tensors[name] = torch.from_numpy(array).view(torch_dtype).reshape(info["shape"])
    return tensors


def read_safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of every *.safetensors shard in a model directory."""
    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise ModelError(f"{directory}: no *.safetensors files (PyTorch .bin checkpoints are "
                         "not supported; convert them to safetensors)")
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        tensors.update(read_safetensors(shard))
    return tensors
