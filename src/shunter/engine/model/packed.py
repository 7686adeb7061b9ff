"""oneDNN-prepacked linear layers for bfloat16 on CPU.

`F.linear` in bfloat16 re-lays the weight out for oneDNN on every call; packing it once in
oneDNN's blocked layout makes a decode-sized matmul (a few rows) 2-4x faster on this CPU and
gives the same result (measured: max abs difference 0 for small batches). Float32 gains
nothing from it, so only bfloat16 models are packed.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PackedLinear", "can_pack", "pack_linears"]


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether packing applies: bfloat16 weights on a CPU with oneDNN."""
    return device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()


class PackedLinear(nn.Module):
    """A bias-free linear layer whose weight lives in oneDNN's layout."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(
            weight.detach().contiguous(), 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, None,
                                                  "none", [], "")


def pack_linears(module: nn.Module) -> None:
    """Replace every bias-free nn.Linear below `module` by a PackedLinear, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and child.bias is None:
            setattr(module, name, PackedLinear(child.weight))
        else:
            pack_linears(child)
