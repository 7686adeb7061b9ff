"""Runs the model on one step's chunks over the paged KV cache it owns.

The runner knows nothing of the scheduler: it is handed a list of chunks (request, the tokens to
compute, where they start, the request's block table) and returns the logits of the chunks that
sample (and, for a request that asks for its prompt's log-probs, the logits at every prompt
position, from a separate forward that leaves the cache alone). It owns the device KV cache
(one [num_blocks, num_kv_heads, block_size, head_dim] K and V per layer, stored as one tensor:
see attention.py for why heads come before block offsets) and the host-memory cache that
preemption by swap copies into.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from shunter.core.types import RequestId
from shunter.engine.model.attention import AttentionMetadata, PrefillSegment
from shunter.engine.model.llama import KVCache, LlamaForCausalLM
from shunter.engine.model.native import load_kernel

__all__ = ["ChunkInput", "ModelRunner"]

PROMPT_LOGITS_ROWS = 256  # logits rows materialized at once (each is vocab floats)


@dataclass(frozen=True, slots=True)
class ChunkInput:
    """Compute `token_ids` at positions [num_computed_tokens, +len) into the request's blocks."""

    request_id: RequestId
    token_ids: Sequence[int]
    num_computed_tokens: int
    block_ids: Sequence[int]
    is_sampling: bool

    @property
    def num_tokens_after(self) -> int:
        return self.num_computed_tokens + len(self.token_ids)


class ModelRunner:
    """The model plus its paged KV cache; `execute` runs a whole mixed step in one forward."""

    def __init__(self, model: LlamaForCausalLM, *, num_blocks: int, block_size: int,
                 num_host_blocks: int = 0) -> None:
        config = model.config
        param = next(model.parameters())
        self.model = model
        self.device, self.dtype = param.device, param.dtype
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.num_kv_heads = config.num_kv_heads
        shape = (config.num_layers, 2, num_blocks, config.num_kv_heads, block_size, config.head_dim)
        self.kv = torch.zeros(shape, dtype=self.dtype, device=self.device)
        host_shape = (config.num_layers, 2, num_host_blocks, *shape[3:])
        pin = self.device.type == "cuda"
        self.host_kv = torch.zeros(host_shape, dtype=self.dtype, pin_memory=pin)
        self.decode_kv_buffer = torch.empty(2, 0, block_size * config.head_dim, dtype=self.dtype,
                                            device=self.device)  # grown on demand
        self.kv_caches: list[KVCache] = [(self.kv[i, 0], self.kv[i, 1])
                                         for i in range(config.num_layers)]
        # decodes read the cache in place where the native kernel applies (native.py)
        native_fits = self.device.type == "cpu" and self.dtype == torch.bfloat16
        self.native = load_kernel() if native_fits else None

    @property
    def kv_bytes_per_block(self) -> int:
        return self.kv[:, :, 0].numel() * self.kv.element_size()

    def swap_out(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy (device block, host block) pairs to host memory."""
        if pairs:
            dev, host = zip(*pairs, strict=True)
            self.host_kv[:, :, list(host)] = self.kv[:, :, list(dev)].to("cpu")

    def swap_in(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy (host block, device block) pairs back into the device cache."""
        if pairs:
            host, dev = zip(*pairs, strict=True)
            self.kv[:, :, list(dev)] = self.host_kv[:, :, list(host)].to(self.device)

    @torch.inference_mode()
    def execute(self, chunks: Sequence[ChunkInput]) -> torch.Tensor:
        """Float32 logits [num_sampling_chunks, vocab], in the order the chunks were given."""
        if not chunks:
            return torch.empty(0, self.model.config.vocab_size)
        input_ids, positions, meta, logit_rows = self._prepare(chunks)
        hidden = self.model(input_ids, positions, self.kv_caches, meta)
        if not logit_rows:
            return torch.empty(0, self.model.config.vocab_size)
        rows = torch.tensor(logit_rows, dtype=torch.long, device=self.device)
        return self.model.compute_logits(hidden.index_select(0, rows),
                                         exact=not meta.has_decodes)

    @torch.inference_mode()
    def prompt_logits(self, token_ids: Sequence[int],
                      max_rows: int = PROMPT_LOGITS_ROWS) -> Iterator[torch.Tensor]:
        """Float32 logits at every position of `token_ids` (row i predicts token i + 1), in
        slices of at most `max_rows` rows: one forward over the whole sequence that writes its
        keys and values into a scratch buffer, never into the paged cache (which may hold these
        tokens' blocks for other requests, or none of them: a prefix-cache hit skips them)."""
        n = len(token_ids)
        config = self.model.config
        scratch = torch.empty(1, config.num_kv_heads, n, config.head_dim, dtype=self.dtype,
                              device=self.device)  # written by every layer, never read
        meta = AttentionMetadata(
            kv_rows=self._kv_rows(torch.arange(n, device=self.device), n), num_prefill_tokens=n,
            prefills=[PrefillSegment(query_start=0, num_query_tokens=n, num_context_tokens=0,
                                     block_table=self._tensor([0]), causal_mask=None)])
        hidden = self.model(self._tensor(list(token_ids)), torch.arange(n, device=self.device),
                            [(scratch, scratch)] * config.num_layers, meta)
        for start in range(0, n, max_rows):
            yield self.model.compute_logits(hidden[start:start + max_rows])

    def _prepare(self, chunks: Sequence[ChunkInput]) -> tuple[
            torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        # Prefill chunks first, then single-token decodes, so decodes form one contiguous slice.
        is_decode = [len(c.token_ids) == 1 and c.num_computed_tokens > 0 for c in chunks]
        order = [i for i, d in enumerate(is_decode) if not d] + [i for i, d in enumerate(is_decode) if d]
        bs = self.block_size
        block_stride = self.num_kv_heads * bs  # cache rows per block
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        last_row: dict[int, int] = {}
        prefills: list[PrefillSegment] = []
        decode_chunks: list[ChunkInput] = []
        for i in order:
            c = chunks[i]
            start, n = c.num_computed_tokens, len(c.token_ids)
            assert len(c.block_ids) * bs >= start + n, f"{c.request_id}: block table too short"
            if is_decode[i]:
                decode_chunks.append(c)
            else:
                prefills.append(self._segment(c, len(input_ids)))
            input_ids.extend(c.token_ids)
            positions.extend(range(start, start + n))
            slots.extend(c.block_ids[p // bs] * block_stride + p % bs
                         for p in range(start, start + n))
            last_row[i] = len(input_ids) - 1
        meta = AttentionMetadata(
            kv_rows=self._kv_rows(self._tensor(slots), bs), prefills=prefills,
            num_prefill_tokens=len(input_ids) - len(decode_chunks))
        if decode_chunks and self.native is not None:
            meta.native = self.native
            meta.decode_tables, meta.decode_lengths = self._native_tables(decode_chunks)
        elif decode_chunks:
            meta.decode_kv_index, meta.decode_mask = self._decode_tables(decode_chunks)
            meta.decode_kv_buffer = self._decode_buffer(meta.decode_kv_index.numel())
        logit_rows = [last_row[i] for i, c in enumerate(chunks) if c.is_sampling]
        return self._tensor(input_ids), self._tensor(positions), meta, logit_rows

    def _segment(self, c: ChunkInput, query_start: int) -> PrefillSegment:
        n, ctx = len(c.token_ids), c.num_computed_tokens
        num_blocks = -(-(ctx + n) // self.block_size)
        mask = None
        if ctx > 0:
            q_pos = torch.arange(n, device=self.device).unsqueeze(1) + ctx
            mask = self._additive(torch.arange(ctx + n, device=self.device).unsqueeze(0) <= q_pos)
        return PrefillSegment(query_start=query_start, num_query_tokens=n, num_context_tokens=ctx,
                              block_table=self._tensor(c.block_ids[:num_blocks]), causal_mask=mask)

    def _decode_tables(self, decodes: list[ChunkInput]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths, tables = self._padded_tables(decodes)
        lens = self._tensor(lengths)
        heads = torch.arange(self.num_kv_heads, device=self.device).view(1, -1, 1)
        index = self._tensor(tables).unsqueeze(1) * self.num_kv_heads + heads  # see AttentionMetadata
        # keys past the longest context are never attended: the mask's width cuts them off
        mask = torch.arange(max(lengths), device=self.device) < lens.unsqueeze(1)
        return index, self._additive(mask)[:, None, None, :]

    def _native_tables(self, decodes: list[ChunkInput]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths, tables = self._padded_tables(decodes)
        return (torch.tensor(tables, dtype=torch.int32),
                torch.tensor(lengths, dtype=torch.int32))

    def _padded_tables(self, decodes: list[ChunkInput]) -> tuple[list[int], list[list[int]]]:
        """Each decode's context length, and its blocks up to the longest's, padded with 0."""
        lengths = [c.num_tokens_after for c in decodes]
        max_blocks = -(-max(lengths) // self.block_size)
        tables = [list(c.block_ids[:max_blocks]) + [0] * (max_blocks - len(c.block_ids[:max_blocks]))
                  for c in decodes]
        return lengths, tables

    def _decode_buffer(self, num_rows: int) -> torch.Tensor:
        if self.decode_kv_buffer.shape[1] < num_rows:
            self.decode_kv_buffer = self.decode_kv_buffer.new_empty(
                2, num_rows, self.decode_kv_buffer.shape[2])
        return self.decode_kv_buffer

    def _kv_rows(self, slot_rows: torch.Tensor, block_size: int) -> torch.Tensor:
        """Each token's head-0 cache row [num_tokens] -> the rows of all its KV heads, flat."""
        heads = torch.arange(self.num_kv_heads, device=self.device) * block_size
        return (slot_rows.unsqueeze(1) + heads).flatten()

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        """0 where attention is allowed, -inf elsewhere, in the model's dtype."""
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        return mask.masked_fill_(~allowed, float("-inf"))

    def _tensor(self, values: Sequence[int] | Sequence[Sequence[int]]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)
