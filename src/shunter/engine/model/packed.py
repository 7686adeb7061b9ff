"""oneDNN-prepacked linear layers for bfloat16 on CPU.

`F.linear` in bfloat16 re-lays the weight out for oneDNN on every call; packing it once in
oneDNN's blocked layout makes a decode-sized matmul (a few rows) 2-4x faster on this CPU and
gives the same result up to 32 rows. Above that, on a CPU with AMX, oneDNN blocks the packed
product differently and rounds differently from `F.linear` (which Hugging Face's model runs): a
prefill of 41 tokens then moved every logit, and top-1 agreement with float32 fell below
transformers-bf16's (issue 17). So a packed layer keeps its plain weight too and runs
`F.linear` above `EXACT_ROWS` rows unless told the rows need not match the reference bit for
bit: a step with decodes in it is told so (the reference decodes one row at a time, which no
batch matches anyway), and there the packed kernel is 1.5x faster at 64 rows. A prefill-only
step (and `prompt_logits`) rounds as the reference does.
Float32 gains nothing from packing, so only bfloat16 models are packed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EXACT_ROWS", "PackedLinear", "can_pack", "linear", "pack_linears"]

EXACT_ROWS = 32  # up to this many rows the packed kernel gives F.linear's bits (measured)


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether packing applies: bfloat16 weights on a CPU with oneDNN."""
    return device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()


class PackedLinear(nn.Module):
    """A bias-free linear layer whose weight lives in oneDNN's layout."""

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        self.weight = weight  # the plain layout, for batches that must round as F.linear does
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(
            weight.detach().contiguous(), 1), persistent=False)

    def forward(self, x: torch.Tensor, exact: bool = True) -> torch.Tensor:
        """`exact`: round as F.linear does (the packed kernel does up to EXACT_ROWS rows)."""
        if exact and x.shape[0] > EXACT_ROWS:
            return F.linear(x, self.weight)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, None,
                                                  "none", [], "")


def linear(layer: nn.Module, x: torch.Tensor, exact: bool) -> torch.Tensor:
    """`layer(x)`, passing `exact` to a packed layer (plain layers always are)."""
    return layer(x, exact) if isinstance(layer, PackedLinear) else layer(x)


def pack_linears(module: nn.Module) -> None:
    """Replace every bias-free nn.Linear below `module` by a PackedLinear, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and child.bias is None:
            setattr(module, name, PackedLinear(child.weight))
        else:
            pack_linears(child)
