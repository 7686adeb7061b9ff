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


@pytest.mark.parametrize("kw", [{"temperature": -1}, {"top_p": 0}, {"top_k": 0},
                                {"max_tokens": 0}, {"stop": ("",)}])
def test_invalid_params_are_request_errors(kw) -> None:
    with pytest.raises(RequestError):
        SamplingParams(**kw)
