"""The step time and memory of speculative decoding (shunter.sim.cost.speculative)."""

import itertools
import random

import pytest

from shunter.core.types import RequestSpec, StepShape
from shunter.errors import ConfigError
from shunter.metrics.summary import summarize
from shunter.sim.config import SimConfig
from shunter.sim.cost.registry import make_cost_model
from shunter.sim.cost.speculative import (
    NGRAM_S_PER_CONTEXT_TOKEN,
    SpeculativeConfig,
    eagle_head,
    speculative_cost_model,
)
from shunter.sim.runner import simulate


def spec_model(method: str, k: int = 4, target: str = "llama-3.1-8b", **kw: object):
    model = "llama-3.2-1b" if method == "draft_model" else None
    config = SpeculativeConfig(method=method, num_speculative_tokens=k, acceptance_rate=0.7,
                               model=model)
    return speculative_cost_model(make_cost_model("roofline", target, "h100", **kw), config)


def decodes(n: int, drafts_each: int = 4, context_each: int = 1000) -> StepShape:
    return StepShape(num_decode_requests=n, num_decode_context_tokens=n * context_each,
                     num_decode_draft_tokens=n * drafts_each)


def test_verification_is_nearly_free_at_low_batch_and_not_at_high() -> None:
    target = make_cost_model("roofline", "llama-3.1-8b", "h100")
    ratio = {n: target.step_time_s(decodes(n)) / target.step_time_s(decodes(n, 0))
             for n in (1, 256)}
    assert ratio[1] < 1.01  # memory-bound: 5 query tokens read the weights once
    assert ratio[256] > 1.8  # 1280 tokens: compute-bound, roughly 5x the FLOPs of 256


def test_drafts_are_query_tokens_with_logits() -> None:
    target = make_cost_model("roofline", "llama-3.1-8b", "h100")
    with_drafts = StepShape(num_decode_requests=64, num_decode_context_tokens=64_000,
                            num_decode_draft_tokens=64 * 4)
    as_tokens = target.lm_head_time_s(64 * 5) - target.lm_head_time_s(64)
    assert with_drafts.num_tokens == 64 * 5
    assert target.step_time_s(with_drafts) - target.step_time_s(decodes(64, 0)) > as_tokens


def test_drafter_costs_rank_ngram_eagle_draft_model() -> None:
    shape = decodes(8)
    times = {m: spec_model(m).draft_time_s(shape) for m in ("ngram", "eagle", "draft_model")}
    assert times["ngram"] == pytest.approx(NGRAM_S_PER_CONTEXT_TOKEN * (8 * 1000 + 8 * 5))
    assert times["ngram"] < 1e-5 < times["eagle"] < times["draft_model"]
    # k passes of the drafter: more drafts, more passes
    assert spec_model("eagle", k=2).draft_time_s(shape) < times["eagle"]
    assert spec_model("eagle").step_time_s(StepShape()) == pytest.approx(
        make_cost_model("roofline", "llama-3.1-8b", "h100").step_time_s(StepShape()))


def test_draft_model_takes_kv_memory() -> None:
    target = make_cost_model("roofline", "llama-3.1-8b", "h100")
    blocks = {m: spec_model(m).num_kv_blocks(16) for m in ("ngram", "eagle", "draft_model")}
    assert blocks["ngram"] == target.num_kv_blocks(16)
    assert blocks["draft_model"] < blocks["eagle"] < blocks["ngram"]
    draft = spec_model("draft_model")
    assert draft.kv_bytes_per_token == target.kv_bytes_per_token + 16 * 2 * 8 * 64 * 2


def test_decode_line_matches_steps() -> None:
    for method in ("ngram", "eagle", "draft_model"):
        model = spec_model(method)
        fixed, slope = model.decode_step_line_s(8)
        assert fixed + slope * 8000 == pytest.approx(model.step_time_s(decodes(8)), rel=1e-9)


def test_eagle_head_is_one_layer_of_the_target() -> None:
    head = eagle_head(make_cost_model("roofline", "llama-3.1-8b", "h100").model)
    assert head.num_layers == 1 and head.hidden_size == 4096 and head.vocab_size == 128256


def test_refusals() -> None:
    with pytest.raises(ConfigError, match="pipeline"):
        spec_model("eagle", pp=2)
    with pytest.raises(ConfigError, match="vocabulary"):
        speculative_cost_model(make_cost_model("roofline", "llama-2-7b", "h100"),
                               SpeculativeConfig(model="llama-3.2-1b", num_speculative_tokens=2,
                                                 acceptance_rate=0.5))


@pytest.mark.slow
def test_print_gain_by_load() -> None:
    """Measured, not asserted: TPOT with EAGLE (k=4, a=0.7) and a Llama-3.2-1B draft model
    against none, Llama-3.1-8B on one H100, at low and high load."""
    print()
    for rate in (1.0, 40.0):  # ~5 running requests; ~250 (max_num_seqs 256)
        rng = random.Random(0)
        arrivals = itertools.accumulate(rng.expovariate(rate) for _ in range(600))
        specs = [RequestSpec(request_id=f"r{i}", arrival_s=t,
                             num_prompt_tokens=rng.randint(100, 400),
                             num_output_tokens=rng.randint(200, 600))
                 for i, t in enumerate(arrivals)]
        row = []
        for label, spec in (("none", None),
                            ("eagle", {"method": "eagle", "num_speculative_tokens": 4,
                                       "acceptance_rate": 0.7}),
                            ("draft 1B", {"model": "llama-3.2-1b", "num_speculative_tokens": 4,
                                          "acceptance_rate": 0.7})):
            run = simulate(SimConfig(model="llama-3.1-8b", gpu="h100", speculative=spec), specs)
            s = summarize(run.records)
            row.append(f"{label} TPOT {s.tpot_s.mean * 1e3:.2f} ms")
        print(f"rate {rate:g} req/s: " + "; ".join(row))
