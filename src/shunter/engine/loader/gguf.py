"""Read GGUF files (llama.cpp's format) with numpy and dequantize their tensors on load.

Format (v2/v3): magic "GGUF", version, tensor count, key/value count, the key/values, one info
record per tensor (name, dims fastest-first, ggml type, offset), then aligned tensor data.
Supported tensor types: F32, F16, BF16, Q4_0, Q4_1, Q8_0 (SmolLM2-135M-Instruct.Q4_1.gguf holds
F32, Q4_1 and Q8_0). llama.cpp's converter permutes the rows of Q and K for its interleaved
RoPE; `llama_tensors` undoes that so the weights use Hugging Face's half-split layout.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shunter.errors import ModelError

__all__ = [
    "SUPPORTED_GGML_TYPES",
    "GGUFFile",
    "GGUFTensorInfo",
    "hf_tensor_name",
    "llama_tensors",
    "read_gguf",
    "unpermute_rope_rows",
]

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _dequant_f32(raw: np.ndarray) -> np.ndarray:
    return raw.view("<f4").astype(np.float32)


def _dequant_f16(raw: np.ndarray) -> np.ndarray:
    return raw.view("<f2").astype(np.float32)


def _dequant_bf16(raw: np.ndarray) -> np.ndarray:
    return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)


def _dequant_q4_0(raw: np.ndarray) -> np.ndarray:
    blocks = raw.reshape(-1, 18)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return (q * d).reshape(-1)


def _dequant_q4_1(raw: np.ndarray) -> np.ndarray:
    blocks = raw.reshape(-1, 20)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)
    m = blocks[:, 2:4].copy().view("<f2").astype(np.float32)
    qs = blocks[:, 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    return (q * d + m).reshape(-1)


def _dequant_q8_0(raw: np.ndarray) -> np.ndarray:
    blocks = raw.reshape(-1, 34)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    return (q * d).reshape(-1)


@dataclass(frozen=True, slots=True)
class _GGMLType:
    name: str
    block_elements: int
    block_bytes: int
    dequantize: Callable[[np.ndarray], np.ndarray]


SUPPORTED_GGML_TYPES: dict[int, _GGMLType] = {
    0: _GGMLType("F32", 1, 4, _dequant_f32),
    1: _GGMLType("F16", 1, 2, _dequant_f16),
    2: _GGMLType("Q4_0", 32, 18, _dequant_q4_0),
    3: _GGMLType("Q4_1", 32, 20, _dequant_q4_1),
    8: _GGMLType("Q8_0", 32, 34, _dequant_q8_0),
    30: _GGMLType("BF16", 1, 2, _dequant_bf16),
}


@dataclass(frozen=True, slots=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (slowest first), i.e. GGUF dims reversed
    ggml_type: int
    offset: int  # from the start of the file

    @property
    def num_elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


class _Reader:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ModelError(f"{self.path}: truncated GGUF header")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        if self.pos + n > len(self.buf):
            raise ModelError(f"{self.path}: truncated GGUF header")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, value_type: int) -> Any:
        if value_type in _SCALARS:
            return self.scalar(_SCALARS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, n = self.scalar("<I"), self.scalar("<Q")
            return [self.value(item_type) for _ in range(n)]
        raise ModelError(f"{self.path}: unknown GGUF value type {value_type} (corrupt file?)")


class GGUFFile:
    """A parsed GGUF file: `metadata` key/values and `tensors` infos; data read on demand."""

    def __init__(self, path: Path, metadata: dict[str, Any], tensors: dict[str, GGUFTensorInfo],
                 buf: mmap.mmap) -> None:
        self.path = path
        self.metadata = metadata
        self.tensors = tensors
        self._buf = buf

    def read_tensor(self, name: str) -> np.ndarray:
        """The tensor as float32, shaped as in numpy/PyTorch (rows = output features)."""
        info = self.tensors[name]
        kind = SUPPORTED_GGML_TYPES.get(info.ggml_type)
        if kind is None:
            valid = ", ".join(t.name for t in SUPPORTED_GGML_TYPES.values())
            raise ModelError(f"{self.path}: tensor {name} has ggml type {info.ggml_type}, "
                             f"not supported (supported: {valid})")
        if info.num_elements % kind.block_elements:
            raise ModelError(f"{self.path}: tensor {name} size is not a whole number of blocks")
        num_bytes = info.num_elements // kind.block_elements * kind.block_bytes
        if info.offset + num_bytes > len(self._buf):
            raise ModelError(f"{self.path}: tensor {name} runs past the end of the file "
                             "(truncated download?)")
        raw = np.frombuffer(self._buf, dtype=np.uint8, count=num_bytes, offset=info.offset)
        return kind.dequantize(raw).reshape(info.shape)


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse the header of a GGUF file; ModelError if it is missing or not GGUF."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from exc
    reader = _Reader(buf, path)
    if len(buf) < 24 or bytes(buf[:4]) != GGUF_MAGIC:
        raise ModelError(f"{path}: not a GGUF file (bad magic)")
    reader.pos = 4
    version = reader.scalar("<I")
    if version not in (2, 3):
        raise ModelError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    num_tensors, num_kv = reader.scalar("<Q"), reader.scalar("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(num_kv):
        key = reader.string()
        metadata[key] = reader.value(reader.scalar("<I"))
    raw_infos = []
    for _ in range(num_tensors):
        name = reader.string()
        dims = [reader.scalar("<Q") for _ in range(reader.scalar("<I"))]
        raw_infos.append((name, tuple(reversed(dims)), reader.scalar("<I"), reader.scalar("<Q")))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    data_start = (reader.pos + alignment - 1) // alignment * alignment
    tensors = {name: GGUFTensorInfo(name, shape, ggml_type, data_start + offset)
               for name, shape, ggml_type, offset in raw_infos}
    return GGUFFile(path, metadata, tensors, buf)


_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_tensor_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a llama GGUF tensor; None for tensors the model does not use."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's convert-time row permutation of a Q or K projection."""
    rows = weight.shape[0]
    return (weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def llama_tensors(gguf: GGUFFile, *, num_heads: int, num_kv_heads: int) -> dict[str, np.ndarray]:
    """All model tensors, dequantized to float32, under Hugging Face names and layout."""
    out: dict[str, np.ndarray] = {}
    for name in gguf.tensors:
        hf_name = hf_tensor_name(name)
        if hf_name is None:
            continue
        weight = gguf.read_tensor(name)
        if name.endswith("attn_q.weight"):
            weight = unpermute_rope_rows(weight, num_heads)
        elif name.endswith("attn_k.weight"):
            weight = unpermute_rope_rows(weight, num_kv_heads)
        out[hf_name] = weight
    return out
