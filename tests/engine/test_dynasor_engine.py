"""Dynasor in the engine: the executor measures each request's certainty every probe_tokens
tokens (1 - normalized entropy of the model's own next-token distributions, averaged over the
window) and the policy stops programs on it, with the tiny random model."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from shunter.core.types import FinishReason  # noqa: E402
from shunter.engine.config import EngineConfig  # noqa: E402
from shunter.engine.llm import LLMEngine  # noqa: E402
from shunter.engine.sampler import SamplingParams  # noqa: E402
from tests.engine.tiny import reference_logits  # noqa: E402

PROBE = 4
PARAMS = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def engine_with(loaded, **policy_params) -> tuple[LLMEngine, list[dict[str, float]]]:
    engine = LLMEngine(EngineConfig.of(model="tiny", dtype="float32", num_blocks=64, block_size=4,
                                    max_num_batched_tokens=64, max_num_seqs=8, policy="dynasor",
                                    policy_params={"probe_tokens": PROBE, **policy_params}),
                       loaded=loaded)
    seen: list[dict[str, float]] = []
    execute = engine.executor.execute

    def recording(output):
        result = execute(output)
        seen.append(dict(result.probes))
        return result

    engine.executor.execute = recording  # type: ignore[method-assign]
    return engine, seen


def run_program(engine: LLMEngine) -> dict[str, tuple[FinishReason | None, list[int]]]:
    prompts = {"qb0": [5, 9, 13, 77], "qb1": [5, 9, 13, 77], "qb2": [5, 9, 13, 77, 200]}
    for rid, prompt in prompts.items():
        engine.add_request(prompt, PARAMS, request_id=rid, program_id="q")
    done: dict[str, tuple[FinishReason | None, list[int]]] = {rid: (None, []) for rid in prompts}
    for out in engine.run():
        reason, tokens = done[out.request_id]
        done[out.request_id] = (out.finish_reason or reason, tokens + list(out.new_token_ids))
    return done


def test_the_engine_reports_each_windows_mean_certainty_of_the_models_distribution(
        tiny_hf_model, tiny_loaded):
    engine, seen = engine_with(tiny_loaded, threshold=1.0)  # never reached: nothing stops
    done = run_program(engine)
    assert all(reason == FinishReason.LENGTH and len(t) == 12 for reason, t in done.values())
    reports = {rid: [p[rid] for p in seen if rid in p] for rid in done}
    assert all(len(values) == 12 // PROBE for values in reports.values())
    # recompute one window from the unbatched reference model: mean of 1 - H / ln V
    prompt, tokens = [5, 9, 13, 77], done["qb0"][1]
    logits = reference_logits(tiny_hf_model, prompt + tokens)[len(prompt) - 1:-1]
    logprobs = logits.float().log_softmax(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1) / math.log(logits.shape[-1])
    expected = [float((1 - entropy[k:k + PROBE]).mean()) for k in range(0, 12, PROBE)]
    assert reports["qb0"] == pytest.approx(expected, abs=1e-4)
    assert all(0.0 <= v <= 1.0 for values in reports.values() for v in values)


def test_a_program_stops_at_the_first_probe_whose_certainty_reaches_the_threshold(tiny_loaded):
    engine, seen = engine_with(tiny_loaded, threshold=1.0)
    run_program(engine)
    first = [p for p in seen if p][0]  # every branch's first window, in one step
    assert sorted(first) == ["qb0", "qb1", "qb2"]
    threshold = sum(first.values()) / 3  # the program's Certaindex at round 1
    engine, _ = engine_with(tiny_loaded, threshold=threshold * (1 - 1e-9))
    done = run_program(engine)
    assert {rid: (reason, len(t)) for rid, (reason, t) in done.items()} == {
        rid: (FinishReason.EARLY_STOP, PROBE) for rid in done}
    assert not engine.has_unfinished_requests and not engine.scheduler.policy.programs
