"""Each logits processor on hand-made rows, and the sampler applying them in order."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from shunter.engine.logits import (  # noqa: E402
    apply_additive,
    apply_allowed,
    apply_frequency_presence,
    apply_min_p,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    raw_logprobs,
    unpack_bitmask,
)
from shunter.engine.sampler import Sampler, SamplingParams, SamplingState  # noqa: E402

INF = float("inf")


def row(*values: float) -> torch.Tensor:
    return torch.tensor([values])


def test_logit_bias_adds_per_token() -> None:
    logits = torch.zeros(2, 4)
    out = apply_additive(logits, torch.tensor([0, 1, 1]), torch.tensor([2, 0, 0]),
                         torch.tensor([5.0, -1.0, -2.0]))
    assert out.tolist() == [[0, 0, 5, 0], [-3, 0, 0, 0]]  # repeated pairs accumulate


def test_repetition_penalty_divides_positive_and_multiplies_negative() -> None:
    logits = row(2.0, -2.0, 3.0, -1.0)
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, torch.tensor([2.0]))
    assert out.tolist() == [[1.0, -4.0, 3.0, -1.0]]


def test_frequency_and_presence_follow_openai() -> None:
    logits = row(1.0, 1.0, 1.0)
    counts = torch.tensor([[0, 1, 3]], dtype=torch.int32)
    out = apply_frequency_presence(logits, counts, torch.tensor([0.5]), torch.tensor([0.25]))
    assert out.tolist() == [[1.0, 1.0 - 0.5 - 0.25, 1.0 - 1.5 - 0.25]]


def test_temperature_top_k_top_p_min_p() -> None:
    assert apply_temperature(row(2.0, 4.0), torch.tensor([2.0])).tolist() == [[1.0, 2.0]]
    assert apply_top_k(row(1.0, 3.0, 2.0, 0.0), torch.tensor([2])).tolist() == \
        [[-INF, 3.0, 2.0, -INF]]
    probs = row(0.5, 0.25, 0.125, 0.125)
    assert apply_top_p(probs, torch.tensor([0.7])).tolist() == [[0.5, 0.25, 0.0, 0.0]]
    assert apply_top_p(probs, torch.tensor([0.1])).tolist() == [[0.5, 0.0, 0.0, 0.0]]
    assert apply_top_p(2 * probs, torch.tensor([0.7])).tolist() == [[1.0, 0.5, 0.0, 0.0]]
    assert apply_min_p(probs, torch.tensor([0.5])).tolist() == [[0.5, 0.25, 0.0, 0.0]]


def test_allowed_mask_and_bitmask_unpacking() -> None:
    words = torch.tensor([[0b1010, 0], [0, 1]], dtype=torch.int32)
    allowed = unpack_bitmask(words, 40)
    assert allowed[0].nonzero().flatten().tolist() == [1, 3]
    assert allowed[1].nonzero().flatten().tolist() == [32]
    high = unpack_bitmask(torch.tensor([[-1]], dtype=torch.int32), 32)  # the sign bit too
    assert bool(high.all())
    out = apply_allowed(torch.zeros(2, 40), allowed)
    assert torch.isfinite(out).sum().item() == 3


def test_raw_logprobs_are_log_softmax_of_the_row() -> None:
    logits = row(1.0, 2.0, 3.0)
    chosen, ids, values = raw_logprobs(logits, torch.tensor([0]), 2)
    norm = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert chosen[0] == pytest.approx(1 - norm)
    assert ids == [[2, 1]] and values[0] == pytest.approx([3 - norm, 2 - norm])


def state(**kw) -> SamplingState:
    params = SamplingParams(**kw)
    gen = None if params.is_greedy else torch.Generator().manual_seed(params.seed or 0)
    return SamplingState(params, gen, stop_token_ids=(0,))


def test_sampler_applies_bias_then_min_tokens_then_penalties() -> None:
    logits = row(5.0, 4.0, 1.0, 0.5)
    s = state(temperature=0.0, min_tokens=1, logit_bias=((3, 3.0),), repetition_penalty=2.0,
              frequency_penalty=1.0)
    s.prompt_token_ids = (1,)
    processed = Sampler.process(logits.clone(), [s])
    # EOS (0) masked; token 1 seen in the prompt: 4 / 2; token 3 biased: 0.5 + 3
    assert processed.tolist() == [[-INF, 2.0, 1.0, 3.5]]
    assert Sampler().sample(logits, [s]) == [3]
    # now 3 has been output once: (3.5 / 2) - 1 = 0.75; min_tokens is met, so EOS is back
    assert Sampler.process(logits.clone(), [s]).tolist() == [[5.0, 2.0, 1.0, 0.75]]


def test_sampler_leaves_the_raw_logits_alone() -> None:
    logits = row(1.0, 2.0, 3.0)
    Sampler().sample(logits, [state(seed=1, logit_bias=((0, 50.0),))])
    assert logits.tolist() == [[1.0, 2.0, 3.0]]


def test_the_allowed_tokens_win_over_min_tokens() -> None:
    s = state(temperature=0.0, min_tokens=1, allowed_token_ids=(0,))
    assert Sampler().sample(row(0.0, 1.0), [s]) == [0]  # EOS is the only token allowed
