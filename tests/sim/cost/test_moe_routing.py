"""The MoE cost model with expert routing profiles (Read-ME's expert-aware batching)."""

import math

import pytest

from shunter.core.types import ExpertProfile, StepShape
from shunter.errors import ConfigError
from shunter.sim.cost.moe import MoeRooflineCostModel, selection_probabilities

E = 8  # mixtral-8x7b: 8 routed experts, 2 per token


@pytest.fixture(scope="module")
def mixtral() -> MoeRooflineCostModel:
    return MoeRooflineCostModel("mixtral-8x7b", "a100-80gb", 2)


def leaning(experts: tuple[int, ...], share: float = 0.97) -> ExpertProfile:
    """A profile putting `share` of its pairs on `experts`, the rest spread over the others."""
    rest = (1.0 - share) / (E - len(experts))
    return ExpertProfile.normalized([share / len(experts) if e in experts else rest
                                     for e in range(E)])


def decodes(mix: list[ExpertProfile], context: int = 16_000) -> StepShape:
    return StepShape(num_decode_requests=len(mix), num_decode_context_tokens=context,
                     expert_mix=tuple((1, p) for p in mix))


def test_an_expert_homogeneous_batch_costs_less_than_a_mixed_one(mixtral):
    homogeneous = [leaning((0, 1)) for _ in range(16)]
    mixed = [leaning((2 * (i % 4), 2 * (i % 4) + 1)) for i in range(16)]
    assert decodes(homogeneous).num_tokens == decodes(mixed).num_tokens == 16
    cheap, dear = mixtral.step_time_s(decodes(homogeneous)), mixtral.step_time_s(decodes(mixed))
    assert cheap < 0.8 * dear  # reading ~2-3 experts per layer instead of ~8
    # and the mixed batch costs about what uniform routing does (all 8 experts hit)
    uniform = mixtral.step_time_s(StepShape(num_decode_requests=16, num_decode_context_tokens=16_000))
    assert dear == pytest.approx(uniform, rel=0.02)


def test_prefill_tokens_of_one_profile_hit_its_experts_only(mixtral):
    profile = leaning((5, 6), share=1.0)  # q = 1 on experts 5 and 6, 0 elsewhere
    mix = ((512, profile),)
    routed = mixtral.routed_expert_time_s(512, mix)
    assert routed < mixtral.expert_time_s(512)  # 2 experts' weights read, not all 8
    # each of its tokens takes exactly those 2 experts, as top-2 must
    assert selection_probabilities(profile.weights, 2) == [0.0] * 5 + [1.0, 1.0, 0.0]


def test_uniform_profiles_give_the_uniform_formula_and_no_profiles_the_same_bits(mixtral):
    uniform = ExpertProfile(tuple([1.0 / E] * E))
    for n in (1, 7, 64, 300):
        plain = StepShape(num_decode_requests=n, num_decode_context_tokens=100 * n)
        routed = StepShape(num_decode_requests=n, num_decode_context_tokens=100 * n,
                           expert_mix=tuple((1, uniform) for _ in range(n)))
        assert mixtral.step_time_s(routed) == pytest.approx(mixtral.step_time_s(plain), rel=1e-12)
        assert mixtral.routed_expert_time_s(n, ()) == pytest.approx(mixtral.expert_time_s(n),
                                                                    rel=1e-12)
    # a shape without a mix is the uniform model's own code path, bit for bit
    shape = StepShape(prefill_chunks=((300, 0),), num_decode_requests=3,
                      num_decode_context_tokens=900)
    fixed, slope = mixtral.decode_step_line_s(3)
    assert mixtral.step_time_s(shape) == MoeRooflineCostModel(
        "mixtral-8x7b", "a100-80gb", 2).step_time_s(shape)
    assert mixtral.step_time_s(StepShape(num_decode_requests=3, num_decode_context_tokens=900)) \
        == fixed + slope * 900


def test_a_routed_decode_step_is_its_line_bit_for_bit(mixtral):
    """What the simulator's decode runs rely on: fixed (context 0, same mix) + slope * c."""
    mix = tuple((1, leaning((e % E, (e + 3) % E), share=0.8)) for e in range(5))
    fixed = mixtral.step_time_s(StepShape(num_decode_requests=5, expert_mix=mix))
    slope = mixtral.decode_step_line_s(5)[1]
    for context in (5, 1234, 98_765):
        shape = StepShape(num_decode_requests=5, num_decode_context_tokens=context, expert_mix=mix)
        assert mixtral.step_time_s(shape) == fixed + slope * context


def test_expert_parallelism_waits_for_the_gpu_holding_the_hot_experts():
    ep = MoeRooflineCostModel("mixtral-8x7b", "h100", 4, ep=4)
    hot = tuple((64, leaning((0, 1), share=1.0)) for _ in range(4))  # experts 0-1: GPU 0
    spread = tuple((64, leaning((2 * g, 2 * g + 1), share=1.0)) for g in range(4))
    assert ep.routed_expert_time_s(256, hot) > ep.routed_expert_time_s(256, spread)


def test_selection_probabilities_sum_to_k_and_stay_within_one():
    for weights in ([0.7, 0.2, 0.1, 0.0], [0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]):
        q = selection_probabilities(tuple(weights), 2)
        assert math.fsum(q) == pytest.approx(2.0) and all(0.0 <= x <= 1.0 for x in q)
    assert selection_probabilities((0.7, 0.2, 0.1, 0.0), 2)[0] == 1.0  # capped, excess passed on


def test_a_profile_for_another_expert_count_is_refused(mixtral):
    wrong = ExpertProfile(tuple([1.0 / 6] * 6))
    with pytest.raises(ConfigError, match="6 weights but mixtral-8x7b has 8 routed experts"):
        mixtral.step_time_s(StepShape(num_decode_requests=1, expert_mix=((1, wrong),)))


def test_bad_profiles_are_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        ExpertProfile((0.5, 0.2))
    with pytest.raises(ValueError, match="each in"):
        ExpertProfile((1.5, -0.5))
    with pytest.raises(ValueError, match="not all 0"):
        ExpertProfile.normalized([0.0, 0.0])
