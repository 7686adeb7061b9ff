"""The engine's log-probs, penalties and seeds on the tiny Llama, against HF transformers
(float32): sampled and prompt log-probs, greedy decoding under HF's repetition penalty, and
seeded sampling that does not depend on what shares the batch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from shunter.core.types import FinishReason  # noqa: E402
from shunter.engine.config import EngineConfig  # noqa: E402
from shunter.engine.llm import LLMEngine  # noqa: E402
from shunter.engine.sampler import SamplingParams  # noqa: E402
from shunter.errors import RequestError  # noqa: E402
from tests.engine.tiny import reference_logits  # noqa: E402

ATOL = 1e-4


def make_engine(loaded, **kw) -> LLMEngine:
    defaults = dict(model="tiny", dtype="float32", num_blocks=64, block_size=4,
                    max_num_batched_tokens=16, max_num_seqs=8)
    return LLMEngine(EngineConfig.of(**{**defaults, **kw}), loaded=loaded)


def prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (n,), generator=gen).tolist() for n in lengths]


def test_sampled_logprobs_equal_hf(tiny_hf_model, tiny_loaded) -> None:
    batch = prompts([5, 13, 22])  # 22 tokens over a 16-token budget: chunked prefill
    params = [SamplingParams(temperature=0.0, max_tokens=6, logprobs=5, ignore_eos=True),
              SamplingParams(seed=3, max_tokens=6, logprobs=0, ignore_eos=True,
                             repetition_penalty=1.3, logit_bias=((7, 2.0),)),
              SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)]
    done = make_engine(tiny_loaded).generate(batch, params)
    for prompt, completion, p in zip(batch, done, params, strict=True):
        if p.logprobs is None:
            assert completion.logprobs == ()
            continue
        assert len(completion.logprobs) == len(completion.token_ids) == 6
        # raw distribution: log_softmax of the model's logits, before bias or penalty
        ref = reference_logits(tiny_hf_model, prompt + list(completion.token_ids))
        ref = ref[len(prompt) - 1:-1].log_softmax(-1)
        for pos, (token_id, entry) in enumerate(zip(completion.token_ids, completion.logprobs,
                                                    strict=True)):
            assert entry.token_id == token_id
            assert entry.logprob == pytest.approx(ref[pos, token_id].item(), abs=ATOL)
            values, ids = ref[pos].topk(p.logprobs)
            assert [t for t, _ in entry.top] == ids.tolist()
            assert [v for _, v in entry.top] == pytest.approx(values.tolist(), abs=ATOL)


def test_prompt_logprobs_equal_hf_even_on_a_prefix_cache_hit(tiny_hf_model, tiny_loaded) -> None:
    engine = make_engine(tiny_loaded)
    [prompt] = prompts([19], seed=4)
    engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=2))  # cache it
    [done] = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=2,
                                                      prompt_logprobs=3))
    assert done.num_cached_tokens > 0
    ref = reference_logits(tiny_hf_model, prompt).log_softmax(-1)
    first, *rest = done.prompt_logprobs
    assert first.token_id == prompt[0] and first.logprob is None and first.top == ()
    assert [e.token_id for e in rest] == prompt[1:]
    for pos, entry in enumerate(rest):
        assert entry.logprob == pytest.approx(ref[pos, prompt[pos + 1]].item(), abs=ATOL)
        assert [t for t, _ in entry.top] == ref[pos].topk(3).indices.tolist()


def test_greedy_with_repetition_penalty_equals_hf_processor(tiny_hf_model, tiny_loaded) -> None:
    penalty = 1.8
    processor = transformers.RepetitionPenaltyLogitsProcessor(penalty)
    batch = prompts([3, 9, 17], seed=5)
    done = make_engine(tiny_loaded).generate(
        batch, SamplingParams(temperature=0.0, max_tokens=12, repetition_penalty=penalty,
                              ignore_eos=True))
    plain = make_engine(tiny_loaded).generate(
        batch, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    assert any(d.token_ids != p.token_ids for d, p in zip(done, plain, strict=True))
    for prompt, completion in zip(batch, done, strict=True):
        ids = list(prompt)
        for _ in range(12):
            scores = reference_logits(tiny_hf_model, ids)[-1:]
            scores = processor(torch.tensor([ids]), scores)
            ids.append(int(scores.argmax()))
        assert list(completion.token_ids) == ids[len(prompt):]


def test_seeded_requests_sample_the_same_whatever_shares_their_batch(tiny_loaded) -> None:
    [prompt] = prompts([7], seed=6)
    seeded = SamplingParams(seed=1234, max_tokens=10, ignore_eos=True, top_k=50,
                            frequency_penalty=0.4)
    [alone] = make_engine(tiny_loaded).generate([prompt], seeded)
    crowd = prompts([11, 4, 20], seed=7)
    others = [SamplingParams(seed=9, max_tokens=4, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=15, repetition_penalty=1.5),
              SamplingParams(max_tokens=8, top_p=0.5, min_p=0.1, ignore_eos=True)]
    done = make_engine(tiny_loaded, max_num_batched_tokens=8).generate(
        [*crowd[:2], prompt, crowd[2]], [*others[:2], seeded, others[2]])
    assert done[2].token_ids == alone.token_ids
    assert len(set(alone.token_ids)) > 1


def test_min_tokens_keeps_eos_away(tiny_loaded) -> None:
    [prompt] = prompts([6], seed=8)
    free = make_engine(tiny_loaded).generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))[0].token_ids
    eos = free[1]  # make the second greedy token the end of sequence
    params = SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=(eos,))
    [stopped] = make_engine(tiny_loaded).generate([prompt], params)
    assert stopped.finish_reason == FinishReason.STOP and len(stopped.token_ids) == 2
    [held] = make_engine(tiny_loaded).generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=(eos,),
                                 min_tokens=6))
    assert len(held.token_ids) >= 6 and eos not in held.token_ids[:6]


def test_logit_bias_forces_a_token_and_ids_outside_the_vocabulary_are_refused(
        tiny_loaded) -> None:
    [prompt] = prompts([5], seed=9)
    [done] = make_engine(tiny_loaded).generate(
        [prompt], SamplingParams(seed=0, max_tokens=5, ignore_eos=True,
                                 logit_bias=((42, 100.0),)))
    assert done.token_ids == (42,) * 5
    engine = make_engine(tiny_loaded)
    for kw, param in [({"logit_bias": ((256, 1.0),)}, "logit_bias"),
                      ({"stop_token_ids": (300,)}, "stop_token_ids"),
                      ({"allowed_token_ids": (5, 999)}, "allowed_token_ids")]:
        with pytest.raises(RequestError) as info:
            engine.add_request(prompt, SamplingParams(**kw))
        assert info.value.param == param
