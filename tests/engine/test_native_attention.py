"""The native bfloat16 decode attention (engine/model/native.py) against PyTorch's fused kernel
over a gather of the same paged cache: the path the engine took before, and still takes on
CUDA, in float32, without a C compiler or with SHUNTER_ATTENTION=torch."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")

from shunter.engine.model import native  # noqa: E402
from shunter.engine.model.attention import (  # noqa: E402
    AttentionMetadata,
    PrefillSegment,
    paged_attention,
)

KERNEL = native.load_kernel()  # None without a compiler or with SHUNTER_ATTENTION=torch
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="no C compiler: the kernel is not built")


def reference(q, k_cache, v_cache, tables: list[list[int]], lengths: list[int], scale: float):
    """PyTorch's fused kernel, one request at a time, over that request's gathered keys."""
    num_kv_heads, head_dim = k_cache.shape[1], k_cache.shape[3]
    group = q.shape[1] // num_kv_heads
    rows = []
    for i, (table, length) in enumerate(zip(tables, lengths, strict=True)):
        keys = k_cache[table].transpose(0, 1).reshape(num_kv_heads, -1, head_dim)[:, :length]
        values = v_cache[table].transpose(0, 1).reshape(num_kv_heads, -1, head_dim)[:, :length]
        queries = q[i].view(num_kv_heads, group, head_dim)
        rows.append(torch.nn.functional.scaled_dot_product_attention(
            queries[None], keys[None], values[None], scale=scale)[0].reshape(-1, head_dim))
    return torch.stack(rows)


def random_case(seed: int, *, num_decodes: int, num_heads: int, num_kv_heads: int,
                head_dim: int, block_size: int, max_len: int):
    gen = torch.Generator().manual_seed(seed)
    num_blocks = num_decodes * (-(-max_len // block_size)) + 3
    shape = (num_blocks, num_kv_heads, block_size, head_dim)
    k_cache = torch.randn(shape, generator=gen).bfloat16()
    v_cache = torch.randn(shape, generator=gen).bfloat16()
    q = (torch.randn(num_decodes, num_heads, head_dim, generator=gen) * 2).bfloat16()
    lengths = torch.randint(1, max_len + 1, (num_decodes,), generator=gen).tolist()
    perm = torch.randperm(num_blocks, generator=gen).tolist()  # scattered blocks
    tables, at = [], 0
    for length in lengths:
        n = -(-length // block_size)
        tables.append(perm[at:at + n])
        at += n
    return q, k_cache, v_cache, tables, lengths


def run_native(kernel, q, k_cache, v_cache, tables, lengths, scale):
    width = max(len(t) for t in tables)
    padded = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    return kernel.run(q, k_cache, v_cache, padded, torch.tensor(lengths, dtype=torch.int32),
                      scale)


def assert_close_to_reference(got, expected) -> None:
    # Same float32 math in another order: at most a couple of bfloat16 ulps apart, rarely any.
    torch.testing.assert_close(got.float(), expected.float(), atol=1e-2, rtol=1.6e-2)
    assert (got != expected).float().mean().item() < 0.25


@needs_kernel
@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim", "block_size"), [
    (9, 3, 64, 16),   # SmolLM2: the AVX-512 path (16-key score blocks, value pairs)
    (4, 4, 64, 5),    # no grouping, odd blocks: partial score blocks, an unpaired value row
    (8, 2, 32, 16),   # head_dim 32: scores vectorized, values portable
    (6, 1, 128, 8),   # multi-query, wide heads
])
def test_native_matches_pytorchs_fused_kernel(num_heads, num_kv_heads, head_dim,
                                              block_size) -> None:
    q, k, v, tables, lengths = random_case(0, num_decodes=11, num_heads=num_heads,
                                           num_kv_heads=num_kv_heads, head_dim=head_dim,
                                           block_size=block_size, max_len=70)
    scale = head_dim ** -0.5
    assert_close_to_reference(run_native(KERNEL, q, k, v, tables, lengths, scale),
                              reference(q, k, v, tables, lengths, scale))


@needs_kernel
def test_portable_build_matches_too() -> None:
    """The C fallback for CPUs without AVX-512 BF16, built here by turning the extension off."""
    if native.platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the flag that turns AVX-512 BF16 off is x86's")
    portable = native.load_kernel(("-mno-avx512bf16",))
    assert portable is not None and portable.isa == 0
    q, k, v, tables, lengths = random_case(1, num_decodes=7, num_heads=9, num_kv_heads=3,
                                           head_dim=64, block_size=16, max_len=90)
    assert_close_to_reference(run_native(portable, q, k, v, tables, lengths, 0.125),
                              reference(q, k, v, tables, lengths, 0.125))


@needs_kernel
def test_a_batch_split_across_threads_gives_the_same_bits() -> None:
    q, k, v, tables, lengths = random_case(2, num_decodes=24, num_heads=9, num_kv_heads=3,
                                           head_dim=64, block_size=16, max_len=120)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_native(KERNEL, q, k, v, tables, lengths, 0.125)
        torch.set_num_threads(3)
        three = run_native(KERNEL, q, k, v, tables, lengths, 0.125)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)


@needs_kernel
def test_mixed_step_writes_decode_rows_in_place() -> None:
    """A step with a prefill chunk first: the kernel fills only the decode rows of the output."""
    q, k, v, tables, lengths = random_case(3, num_decodes=3, num_heads=9, num_kv_heads=3,
                                           head_dim=64, block_size=16, max_len=40)
    prefill_q = torch.randn(5, 9, 64).bfloat16()
    prefill_kv = torch.randn(5, 3, 64).bfloat16()
    width = max(len(t) for t in tables)
    meta = AttentionMetadata(
        kv_rows=torch.zeros(0, dtype=torch.long), num_prefill_tokens=5, native=KERNEL,
        prefills=[PrefillSegment(query_start=0, num_query_tokens=5, num_context_tokens=0,
                                 block_table=torch.tensor([0]), causal_mask=None)],
        decode_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables],
                                   dtype=torch.int32),
        decode_lengths=torch.tensor(lengths, dtype=torch.int32))
    out = paged_attention(torch.cat([prefill_q, q]), torch.cat([prefill_kv, prefill_kv[:3]]),
                          torch.cat([prefill_kv, prefill_kv[:3]]), k, v, meta, 0.125)
    assert torch.equal(out[5:], run_native(KERNEL, q, k, v, tables, lengths, 0.125))
    assert_close_to_reference(out[5:], reference(q, k, v, tables, lengths, 0.125))


def test_without_a_compiler_pytorch_runs_and_says_so(monkeypatch, tmp_path, caplog) -> None:
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setenv(native.KERNEL_DIR_ENV, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native._build(("-DFRESH_KEY",)) is None
    assert "no C compiler (no-such-compiler-here)" in caplog.text
    assert not any(tmp_path.iterdir())


def test_attention_env_torch_turns_the_kernel_off(monkeypatch) -> None:
    monkeypatch.setenv(native.ATTENTION_ENV, "torch")
    assert native.load_kernel() is None


def test_an_unknown_attention_choice_is_refused(monkeypatch) -> None:
    monkeypatch.setenv(native.ATTENTION_ENV, "flash")
    with pytest.raises(native.ConfigError, match="SHUNTER_ATTENTION='flash': use 'native'"):
        native.load_kernel()
