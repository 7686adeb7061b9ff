from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from shunter.engine.sampler import Sampler, SamplingParams, SamplingState  # noqa: E402
from shunter.errors import RequestError  # noqa: E402


def state(seed: int | None = None, **kw) -> SamplingState:
    params = SamplingParams(seed=seed, **kw)
    gen = None if params.is_greedy else torch.Generator().manual_seed(seed or 0)
    return SamplingState(params, gen)


def test_greedy_takes_the_argmax() -> None:
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 1.0, 0.0]])
    assert Sampler().sample(logits, [state(temperature=0.0), state(top_k=1)]) == [1, 0]


def test_seeded_sampling_is_reproducible_and_independent_of_batch() -> None:
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    s1, s2 = state(seed=7), state(seed=7)
    draws1 = [Sampler().sample(logits, [s1])[0] for _ in range(20)]
    batch = torch.cat([torch.randn(1, 50), logits])
    draws2 = [Sampler().sample(batch, [state(seed=3), s2])[1] for _ in range(20)]
    assert draws1 == draws2
    assert len(set(draws1)) > 1  # it really samples


def test_top_k_and_top_p_restrict_the_support() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top_k = state(seed=1, top_k=2)
    top_p = state(seed=2, top_p=0.7)  # 0.5 + 0.3 reaches 0.7: tokens 0 and 1 only
    assert {Sampler().sample(logits, [top_k])[0] for _ in range(200)} == {0, 1}
    assert {Sampler().sample(logits, [top_p])[0] for _ in range(200)} == {0, 1}


def test_sampling_frequencies_follow_the_distribution() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    s = state(seed=5)
    counts = torch.bincount(torch.tensor([Sampler().sample(logits, [s])[0] for _ in range(2000)]),
                            minlength=3)
    assert torch.allclose(counts / 2000, torch.tensor([0.7, 0.2, 0.1]), atol=0.04)


@pytest.mark.parametrize("kw,param", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": 0}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"), ({"stop": ("",)}, "stop"), ({"min_p": 1.5}, "min_p"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -2.1}, "frequency_penalty"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": float("nan")}, "repetition_penalty"),
    ({"logit_bias": ((3, 101.0),)}, "logit_bias"), ({"logit_bias": ((-1, 1.0),)}, "logit_bias"),
    ({"logprobs": 21}, "logprobs"), ({"logprobs": -1}, "logprobs"),
    ({"prompt_logprobs": 21}, "prompt_logprobs"), ({"min_tokens": -1}, "min_tokens"),
    ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
    ({"allowed_token_ids": ()}, "allowed_token_ids"),
    ({"stop_token_ids": (-2,)}, "stop_token_ids"),
])
def test_invalid_params_are_request_errors_naming_the_param(kw, param) -> None:
    with pytest.raises(RequestError) as info:
        SamplingParams(**kw)
    assert info.value.param == param


def test_edges_of_the_ranges_are_valid() -> None:
    SamplingParams(top_k=-1, min_p=1.0, presence_penalty=-2, frequency_penalty=2,
                   repetition_penalty=0.01, logit_bias=((0, -100.0), (1, 100.0)), logprobs=0,
                   prompt_logprobs=20, min_tokens=4, max_tokens=4)
    assert SamplingParams(top_k=-1).top_k_cut is None


def test_min_tokens_masks_eos_until_enough_outputs() -> None:
    logits = torch.tensor([[9.0, 1.0, 0.0]])  # token 0 (EOS here) is by far the likeliest
    for s in (SamplingState(SamplingParams(temperature=0.0, min_tokens=3), None,
                            stop_token_ids=(0,)),
              SamplingState(SamplingParams(seed=1, min_tokens=3),
                            torch.Generator().manual_seed(1), stop_token_ids=(0,))):
        draws = [Sampler().sample(logits, [s])[0] for _ in range(5)]
        assert 0 not in draws[:3] and draws[3:] == [0, 0]


def test_logit_bias_forces_a_token() -> None:
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    states = [state(temperature=0.0, logit_bias=((17, 100.0),)),
              state(seed=4, logit_bias=((17, 100.0),)),
              state(seed=5, top_p=0.5, logit_bias=((17, 100.0), (3, -100.0)))]
    assert Sampler().sample(logits, states) == [17, 17, 17]
    banned = state(temperature=0.0, logit_bias=((int(logits[0].argmax()), -100.0),))
    assert Sampler().sample(logits[:1], [banned]) != [int(logits[0].argmax())]


def test_seeded_rows_ignore_what_else_is_processed_beside_them() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 60, generator=gen)
    kw = dict(seed=11, top_k=30, min_p=0.05, presence_penalty=0.5, frequency_penalty=0.3,
              repetition_penalty=1.2)
    alone, mixed = state(**kw), state(**kw)
    alone.prompt_token_ids = mixed.prompt_token_ids = (1, 2, 3)
    draws_alone = [Sampler().sample(logits, [alone])[0] for _ in range(15)]
    draws_mixed = []
    others = [state(temperature=0.0, repetition_penalty=1.5), state(seed=2, top_p=0.3),
              state(temperature=0.0)]
    for _ in range(15):
        batch = torch.cat([torch.randn(2, 60, generator=gen), logits,
                           torch.randn(1, 60, generator=gen)])
        draws_mixed.append(Sampler().sample(batch, [others[0], others[1], mixed, others[2]])[2])
    assert draws_alone == draws_mixed and len(set(draws_alone)) > 1
