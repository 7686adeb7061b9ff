"""Attention over a paged KV cache, for a flattened batch of prefill chunks and decodes.

Layout of one step's tokens: every prefill chunk's tokens first (one segment per request),
then one token per decoding request. The K/V of the new tokens are written into their cache
slots first; attention then reads each request's whole context back through its block table.
Decodes run in the native kernel where it applies (native.py: bfloat16 on CPU, keys read in
place), else as one batched attention over a padded gather of their keys, laid out per KV head
([decodes, kv_heads, length, head_dim]); prefill chunks run one segment at a time (a step has
few of them). The same tensor code runs on CPU and CUDA.

The cache is laid out [num_blocks, num_kv_heads, block_size, head_dim], so one (block, KV head)
pair is a contiguous run of block_size keys and a gather copies whole runs (2 KiB each in bf16
for SmolLM2) into a per-head layout the fused kernel reads with unit key stride. Gathering
single keys (128-byte rows) from a [num_blocks, block_size, num_kv_heads, head_dim] cache took
twice as long at 64 decodes whose blocks were scattered (1.5 vs 0.8 ms a layer, alone), about
as long when most of each request's blocks are consecutive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shunter.engine.model.native import NativeKernel

__all__ = ["AttentionMetadata", "PrefillSegment", "paged_attention", "write_kv"]


@dataclass(slots=True, kw_only=True)
class PrefillSegment:
    """One request's chunk: query tokens [query_start, +num_query_tokens) of the batch."""

    query_start: int
    num_query_tokens: int
    num_context_tokens: int  # tokens already in the cache before this chunk
    block_table: torch.Tensor  # [num_blocks covering context + chunk], int64
    causal_mask: torch.Tensor | None  # [num_query, context + num_query] additive; None: no context


@dataclass(slots=True, kw_only=True)
class AttentionMetadata:
    """Per-step indexing shared by every layer."""

    # [num_tokens * num_kv_heads] int64: where each new (token, KV head) key goes in the cache
    # viewed as [num_blocks * num_kv_heads * block_size, head_dim].
    kv_rows: torch.Tensor
    prefills: list[PrefillSegment]
    num_prefill_tokens: int
    # [num_decodes, num_kv_heads, max_blocks] int64: (block * num_kv_heads + head) of each decode's
    # blocks, rows of the cache viewed as [num_blocks * num_kv_heads, block_size * head_dim]
    # (padding points at block 0 and is masked).
    decode_kv_index: torch.Tensor | None = None
    # [num_decodes, 1, 1, max_len] (max_len: the longest decode context): 0 for real keys, -inf
    # for padding. Additive masks in the model dtype are built once per step; a bool mask would
    # be converted per layer.
    decode_mask: torch.Tensor | None = None
    # [2, >= decode_kv_index.numel(), block_size * head_dim]: where every layer gathers its decode
    # keys and values in turn (a buffer the runner keeps: no per-layer allocation to fault in).
    decode_kv_buffer: torch.Tensor | None = None
    # With the native kernel (native.py: bfloat16 on CPU) instead of the three above:
    # [num_decodes, max_blocks] int32 block ids and [num_decodes] int32 context lengths.
    native: NativeKernel | None = None
    decode_tables: torch.Tensor | None = None
    decode_lengths: torch.Tensor | None = None

    @property
    def has_decodes(self) -> bool:
        return self.decode_kv_index is not None or self.decode_tables is not None


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             kv_rows: torch.Tensor) -> None:
    """Store new keys/values ([num_tokens, num_kv_heads, head_dim]) in their cache rows."""
    head_dim = k.shape[-1]
    k_cache.view(-1, head_dim).index_copy_(0, kv_rows, k.reshape(-1, head_dim))
    v_cache.view(-1, head_dim).index_copy_(0, kv_rows, v.reshape(-1, head_dim))


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: [num_tokens, num_heads, head_dim]; k/v: this step's keys/values. Returns q's shape."""
    if not meta.prefills and meta.has_decodes:  # all decodes: no copy
        return _decode_attention(q, k_cache, v_cache, meta, scale)
    out = torch.empty_like(q)
    for seg in meta.prefills:
        lo, hi = seg.query_start, seg.query_start + seg.num_query_tokens
        out[lo:hi] = _prefill_attention(q[lo:hi], k[lo:hi], v[lo:hi], k_cache, v_cache, seg, scale)
    if meta.has_decodes:
        lo = meta.num_prefill_tokens
        _decode_attention(q[lo:], k_cache, v_cache, meta, scale, out[lo:])
    return out


def _gather(cache: torch.Tensor, index: torch.Tensor,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """[..., num_blocks] (block * num_kv_heads + head) rows -> [..., num_blocks * block_size,
    head_dim]: each head's keys in context order (into `out`'s first rows if given)."""
    head_dim, rows = cache.shape[-1], index.reshape(-1)
    if out is not None:
        out = out[:rows.numel()]
    runs = torch.index_select(cache.view(-1, cache.shape[-2] * head_dim), 0, rows, out=out)
    return runs.view(*index.shape[:-1], -1, head_dim)


def _prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, seg: PrefillSegment, scale: float) -> torch.Tensor:
    num_heads, num_kv_heads = q.shape[1], k.shape[1]
    if seg.causal_mask is None:  # the chunk is the whole context: no cache read needed
        keys, values, mask, causal = k.transpose(0, 1), v.transpose(0, 1), None, True
    else:
        length = seg.num_context_tokens + seg.num_query_tokens
        heads = torch.arange(num_kv_heads, device=q.device).unsqueeze(1)
        index = seg.block_table.unsqueeze(0) * num_kv_heads + heads  # [kv_heads, num_blocks]
        keys = _gather(k_cache, index)[:, :length]
        values = _gather(v_cache, index)[:, :length]
        mask, causal = seg.causal_mask, False
    # A batch axis of one: 4-D inputs reach the fused (flash) CPU kernel, the one Hugging Face's
    # model runs; 3-D ones fall back to the unfused math path, which rounds differently in
    # bfloat16 (and materializes the whole score matrix).
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], keys[None], values[None],
        attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=num_heads != num_kv_heads,
    )
    return out[0].transpose(0, 1)


def _decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      meta: AttentionMetadata, scale: float,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Into `out` if given (the decode rows of a mixed step's output); returns the result."""
    if meta.native is not None:
        assert meta.decode_tables is not None and meta.decode_lengths is not None
        return meta.native.run(q, k_cache, v_cache, meta.decode_tables, meta.decode_lengths,
                               scale, out)
    # One query per request: fold the query heads sharing a KV head into the "query length"
    # axis, so GQA needs no repeated keys and all decodes go through one fused attention call.
    # Keys past the longest context are cut off (a view: rows keep unit stride).
    num_decodes, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[-3]
    group = num_heads // num_kv_heads
    length = meta.decode_mask.shape[-1]
    k_out, v_out = (None, None) if meta.decode_kv_buffer is None else meta.decode_kv_buffer
    keys = _gather(k_cache, meta.decode_kv_index, k_out)[:, :, :length]
    values = _gather(v_cache, meta.decode_kv_index, v_out)[:, :, :length]
    queries = q.view(num_decodes, num_kv_heads, group, head_dim)
    result = F.scaled_dot_product_attention(queries, keys, values, attn_mask=meta.decode_mask,
                                            scale=scale).reshape(num_decodes, num_heads, head_dim)
    return result if out is None else out.copy_(result)
