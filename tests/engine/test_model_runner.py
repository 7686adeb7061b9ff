"""The paged, batched model runner against the unbatched HF reference, driven by plain chunks."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from shunter.engine.model import build_llama  # noqa: E402
from shunter.engine.model_runner import ChunkInput, ModelRunner  # noqa: E402
from tests.engine.tiny import reference_logits  # noqa: E402

BLOCK_SIZE = 4


def make_runner(loaded, num_blocks: int = 64) -> ModelRunner:
    model = build_llama(loaded.config, loaded.tensors, max_positions=512)
    return ModelRunner(model, num_blocks=num_blocks, block_size=BLOCK_SIZE)


def drive(runner: ModelRunner, prompts: dict[str, list[int]], num_new_tokens: int,
          token_budget: int, blocks_per_request: int = 16) -> tuple[dict, dict]:
    """A toy chunked-prefill loop: decodes first, then prefill chunks within the token budget."""
    tokens = {rid: list(p) for rid, p in prompts.items()}
    computed = dict.fromkeys(prompts, 0)
    tables = {rid: list(range(i * blocks_per_request, (i + 1) * blocks_per_request))
              for i, rid in enumerate(prompts)}
    logits_seen: dict[str, list] = {rid: [] for rid in prompts}
    while any(len(t) - len(prompts[r]) < num_new_tokens for r, t in tokens.items()):
        budget, chunks = token_budget, []
        live = [r for r in prompts if len(tokens[r]) - len(prompts[r]) < num_new_tokens]
        for rid in sorted(live, key=lambda r: computed[r] < len(tokens[r]) - 1):
            n = min(len(tokens[rid]) - computed[rid], budget)
            if n <= 0:
                continue
            budget -= n
            start = computed[rid]
            chunks.append(ChunkInput(rid, tokens[rid][start:start + n], start, tables[rid],
                                     start + n == len(tokens[rid])))
        logits = runner.execute(chunks)
        sampling = [c for c in chunks if c.is_sampling]
        for chunk, row in zip(sampling, logits, strict=True):
            tokens[chunk.request_id].append(int(row.argmax()))
            logits_seen[chunk.request_id].append(row)
        for chunk in chunks:
            computed[chunk.request_id] += len(chunk.token_ids)
    return {r: t[len(prompts[r]):] for r, t in tokens.items()}, logits_seen


def assert_matches_reference(hf_model, prompt: list[int], output: list[int], rows: list) -> None:
    ref = reference_logits(hf_model, prompt + output)[len(prompt) - 1:-1]
    assert ref.argmax(-1).tolist() == output  # token for token greedy equality
    torch.testing.assert_close(torch.stack(rows), ref, atol=2e-4, rtol=1e-4)


def test_single_request_matches_reference(tiny_hf_model, tiny_loaded) -> None:
    prompt = [5, 17, 42, 99, 3, 250, 7]
    outputs, rows = drive(make_runner(tiny_loaded), {"a": prompt}, 12, token_budget=64)
    assert_matches_reference(tiny_hf_model, prompt, outputs["a"], rows["a"])


def test_mixed_batch_of_prefills_and_decodes(tiny_hf_model, tiny_loaded) -> None:
    gen = torch.Generator().manual_seed(1)
    prompts = {f"r{i}": torch.randint(3, 256, (n,), generator=gen).tolist()
               for i, n in enumerate([1, 5, 13, 30])}
    outputs, rows = drive(make_runner(tiny_loaded), prompts, 8, token_budget=24)
    for rid, prompt in prompts.items():
        assert_matches_reference(tiny_hf_model, prompt, outputs[rid], rows[rid])


@pytest.mark.parametrize("token_budget", [1, 3, 5])
def test_chunked_prefill_across_block_boundaries(tiny_hf_model, tiny_loaded, token_budget) -> None:
    prompt = list(range(40, 63))  # 23 tokens: chunks of 3 and 5 straddle the 4-token blocks
    outputs, rows = drive(make_runner(tiny_loaded), {"a": prompt}, 5, token_budget=token_budget)
    assert_matches_reference(tiny_hf_model, prompt, outputs["a"], rows["a"])


def test_non_contiguous_block_tables(tiny_hf_model, tiny_loaded) -> None:
    runner = make_runner(tiny_loaded)
    prompt = list(range(10, 30))
    table = [9, 2, 30, 4, 17, 1]
    logits = runner.execute([ChunkInput("a", prompt[:11], 0, table, False)])
    assert logits.shape[0] == 0
    logits = runner.execute([ChunkInput("a", prompt[11:], 11, table, True)])
    ref = reference_logits(tiny_hf_model, prompt)[-1]
    torch.testing.assert_close(logits[0], ref, atol=2e-4, rtol=1e-4)


def test_swap_out_and_in_preserves_the_cache(tiny_hf_model, tiny_loaded) -> None:
    model = build_llama(tiny_loaded.config, tiny_loaded.tensors, max_positions=512)
    runner = ModelRunner(model, num_blocks=8, block_size=BLOCK_SIZE, num_host_blocks=4)
    prompt = list(range(60, 70))
    runner.execute([ChunkInput("a", prompt, 0, [0, 1, 2], False)])
    runner.swap_out([(0, 3), (1, 0), (2, 1)])
    runner.kv.zero_()  # another request overwrote the device blocks meanwhile
    runner.swap_in([(3, 5), (0, 6), (1, 7)])
    logits = runner.execute([ChunkInput("a", [70], 10, [5, 6, 7], True)])
    ref = reference_logits(tiny_hf_model, prompt + [70])[-1]
    torch.testing.assert_close(logits[0], ref, atol=2e-4, rtol=1e-4)


def test_packed_bf16_linears_match_plain_bf16(tiny_loaded) -> None:
    from shunter.engine.model.packed import PackedLinear, can_pack

    if not can_pack(torch.device("cpu"), torch.bfloat16):
        pytest.skip("no oneDNN on this CPU build")
    logits = []
    for pack in (False, True):
        model = build_llama(tiny_loaded.config, tiny_loaded.tensors, max_positions=64,
                            dtype=torch.bfloat16, pack_weights=pack)
        assert isinstance(model.layers[0].qkv_proj, PackedLinear) == pack
        runner = ModelRunner(model, num_blocks=16, block_size=BLOCK_SIZE)
        prompt = list(range(30, 50))
        rows = [runner.execute([ChunkInput("a", prompt, 0, list(range(8)), True)])[0]]
        rows.append(runner.execute([ChunkInput("a", [7], 20, list(range(8)), True)])[0])
        logits.append(torch.stack(rows))
    torch.testing.assert_close(logits[1], logits[0], atol=0.05, rtol=0.02)
    assert logits[1].argmax(-1).tolist() == logits[0].argmax(-1).tolist()
