"""The whole engine (core scheduler + executor + model) against the unbatched HF reference.

Every scheduling decision here is the core scheduler's: chunking, admission, preemption by
recompute and by swap, prefix-cache hits. Greedy output must equal the reference token for
token through all of them.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from shunter.core.types import FinishReason  # noqa: E402
from shunter.engine.config import EngineConfig  # noqa: E402
from shunter.engine.llm import LLMEngine  # noqa: E402
from shunter.engine.sampler import SamplingParams  # noqa: E402
from shunter.errors import RequestError  # noqa: E402
from tests.engine.tiny import reference_logits  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, max_tokens=10)


def make_engine(loaded, **kw) -> LLMEngine:
    defaults = dict(model="tiny", dtype="float32", num_blocks=64, block_size=4,
                    max_num_batched_tokens=64, max_num_seqs=8)
    return LLMEngine(EngineConfig.of(**{**defaults, **kw}), loaded=loaded)


def prompts(n: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (length,), generator=gen).tolist() for length in lengths[:n]]


def assert_greedy_equal(hf_model, prompt: list[int], output: tuple[int, ...]) -> None:
    ref = reference_logits(hf_model, prompt + list(output))[len(prompt) - 1:-1]
    assert ref.argmax(-1).tolist() == list(output)


def test_single_request(tiny_hf_model, tiny_loaded) -> None:
    engine = make_engine(tiny_loaded)
    [prompt] = prompts(1, [9])
    [done] = engine.generate([prompt], GREEDY)
    assert done.finish_reason == FinishReason.LENGTH and len(done.token_ids) == 10
    assert_greedy_equal(tiny_hf_model, prompt, done.token_ids)


def test_mixed_batch_with_chunked_prefill(tiny_hf_model, tiny_loaded) -> None:
    engine = make_engine(tiny_loaded, max_num_batched_tokens=7)  # chunks cross 4-token blocks
    batch = prompts(5, [1, 6, 11, 19, 26], seed=1)
    done = engine.generate(batch, GREEDY)
    for prompt, completion in zip(batch, done, strict=True):
        assert_greedy_equal(tiny_hf_model, prompt, completion.token_ids)


@pytest.mark.parametrize("mode,num_host_blocks", [("recompute", 0), ("swap", 32)])
def test_preemption_and_resume(tiny_hf_model, tiny_loaded, mode, num_host_blocks) -> None:
    engine = make_engine(tiny_loaded, num_blocks=12, preemption_mode=mode,
                         num_host_blocks=num_host_blocks)
    swaps = []
    runner = engine.executor.runner
    swap_out = runner.swap_out
    runner.swap_out = lambda pairs: (swaps.append(len(pairs)), swap_out(pairs))  # type: ignore[method-assign]
    batch = prompts(4, [10, 12, 9, 11], seed=2)
    done = engine.generate(batch, SamplingParams(temperature=0.0, max_tokens=12))
    assert engine.load().num_preemptions > 0
    assert (sum(swaps) > 0) == (mode == "swap")
    for prompt, completion in zip(batch, done, strict=True):
        assert len(completion.token_ids) == 12
        assert_greedy_equal(tiny_hf_model, prompt, completion.token_ids)
    assert engine.load().num_free_blocks == 12


def test_prefix_cache_hits_compute_a_shared_prompt_once(tiny_hf_model, tiny_loaded) -> None:
    engine = make_engine(tiny_loaded)
    shared = prompts(1, [21], seed=3)[0]
    first = shared + [7, 8]
    [done1] = engine.generate([first], GREEDY)
    later = [shared + [9], shared + [10, 11, 12]]
    computed = []
    runner_execute = engine.executor.runner.execute
    engine.executor.runner.execute = lambda chunks: (  # type: ignore[method-assign]
        computed.extend(len(c.token_ids) for c in chunks), runner_execute(chunks))[1]
    done = engine.generate(later, GREEDY)
    assert [c.num_cached_tokens for c in done] == [20, 20]  # 5 whole 4-token blocks each
    assert sum(computed) == (22 - 20) + (24 - 20) + 2 * 9  # uncached tail + 9 decodes each
    for prompt, completion in zip([first, *later], [done1, *done], strict=True):
        assert_greedy_equal(tiny_hf_model, prompt, completion.token_ids)


def test_abort_frees_everything(tiny_loaded) -> None:
    engine = make_engine(tiny_loaded, num_blocks=16)
    a = engine.add_request(prompts(1, [13])[0], GREEDY)
    b = engine.add_request(prompts(1, [5])[0], GREEDY)
    engine.step()
    assert engine.load().num_free_blocks < 16
    out = engine.abort(a)
    assert out is not None and out.finish_reason == FinishReason.ABORT
    assert engine.abort(a) is None
    engine.abort(b)
    assert not engine.has_unfinished_requests and engine.load().num_free_blocks == 16
    engine.step()  # delivers finished ids to the executor
    assert engine.executor.num_live_requests == 0


def test_bad_prompts_are_request_errors(tiny_loaded) -> None:
    engine = make_engine(tiny_loaded, max_model_len=32)
    for bad in ([], [300], list(range(3, 40))):
        with pytest.raises(RequestError):
            engine.add_request(bad, GREEDY)
    assert not engine.has_unfinished_requests


def test_a_host_kv_tier_serves_an_evicted_prefix_back(tiny_hf_model, tiny_loaded) -> None:
    """host_kv_offload = "all": a finished request's blocks are stored to host memory; once
    other prompts have evicted them from the device, the same prompt copies them back (no
    recompute) and still generates exactly the reference's greedy tokens."""
    engine = make_engine(tiny_loaded, num_blocks=16, num_host_blocks=64, host_kv_reuse=True,
                         host_kv_offload="all")
    copied_in = []
    runner = engine.executor.runner
    swap_in = runner.swap_in
    runner.swap_in = lambda pairs: (copied_in.append(len(pairs)), swap_in(pairs))  # type: ignore[method-assign]
    target, *others = prompts(4, [22, 30, 30, 30], seed=5)
    [first] = engine.generate([target], GREEDY)
    for other in others:  # 40 tokens a request in 16 blocks of 4: the target's blocks go
        engine.generate([other], GREEDY)
    [again] = engine.generate([target], GREEDY)
    assert first.num_cached_tokens == 0
    assert again.num_cached_tokens == 20  # 5 full blocks of its prompt, from the host
    assert sum(copied_in) == 5
    assert again.token_ids == first.token_ids
    assert_greedy_equal(tiny_hf_model, target, again.token_ids)
