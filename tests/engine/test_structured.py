"""Structured output through llguidance: what a request may ask, and generated text that
matches it (a random tiny model, the hardest case for the mask, and SmolLM2 for real JSON)."""

from __future__ import annotations

import json
import re

import pytest

torch = pytest.importorskip("torch")

from shunter.backend.protocol import GenerateRequest  # noqa: E402
from shunter.core.types import FinishReason  # noqa: E402
from shunter.engine.config import EngineConfig  # noqa: E402
from shunter.engine.llm import LLMEngine  # noqa: E402
from shunter.engine.request_params import structured_output  # noqa: E402
from shunter.engine.sampler import SamplingParams  # noqa: E402
from shunter.engine.structured import StructuredOutput  # noqa: E402
from shunter.errors import ModelError, RequestError  # noqa: E402

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "n"],
          "properties": {"ok": {"type": "boolean"},
                         "n": {"type": "integer", "minimum": 0, "maximum": 99}}}


def request(**kw) -> GenerateRequest:
    return GenerateRequest(request_id="r", model="m", prompt="x", **kw)


def test_asks_come_from_response_format_or_vllm_fields() -> None:
    assert structured_output(request()) is None
    assert structured_output(request(response_format={"type": "text"})) is None
    ask = structured_output(request(response_format={"type": "json_object"}))
    assert ask == StructuredOutput.json_object()
    ask = structured_output(request(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}))
    assert ask is not None and json.loads(ask.spec) == SCHEMA
    assert ask.param == "response_format.json_schema"
    ask = structured_output(request(body={"guided_choice": ["a", "b"]}))
    assert ask is not None and ask.param == "guided_choice"
    ask = structured_output(request(body={"structured_outputs": {"regex": "[a-z]+"}}))
    assert ask is not None and ask.spec == "[a-z]+"


@pytest.mark.parametrize("kw,param", [
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema"),
    ({"response_format": {"type": "json_object"}, "body": {"guided_regex": "a"}}, "guided_regex"),
    ({"body": {"guided_choice": []}}, "guided_choice"),
    ({"body": {"structured_outputs": {"grammar": "root ::= x"}}}, "structured_outputs.grammar"),
])
def test_bad_asks_are_request_errors_naming_the_field(kw, param) -> None:
    with pytest.raises(RequestError) as info:
        structured_output(request(**kw))
    assert info.value.param == param


def test_compile_errors_are_found_without_a_tokenizer() -> None:
    assert StructuredOutput.json_schema(SCHEMA).error() is None
    assert StructuredOutput.regex("(", "guided_regex").error()
    assert StructuredOutput.json_schema({"type": "object", "properties": {
        "a": {"type": "no-such-type"}}}).error()


def tok_engine(loaded) -> LLMEngine:
    return LLMEngine(EngineConfig.of(model="tiny", dtype="float32", num_blocks=64, block_size=4),
                     loaded=loaded)


def test_random_model_output_matches_choice_regex_and_schema(tok_loaded) -> None:
    asks = [StructuredOutput.choice(["yes", "no", "maybe"], "guided_choice"),
            StructuredOutput.regex(r"[0-9]{3}-[a-z]{2}", "guided_regex"),
            StructuredOutput.json_schema(SCHEMA)]
    engine = tok_engine(tok_loaded)
    for seed in range(3):
        done = engine.generate(["the cat"] * 3, [SamplingParams(seed=seed, max_tokens=40,
                                                                structured=a) for a in asks])
        assert all(c.finish_reason == FinishReason.STOP for c in done)
        assert done[0].text in ("yes", "no", "maybe")
        assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", done[1].text)
        value = json.loads(done[2].text)
        assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool)
        assert 0 <= value["n"] <= 99


def test_greedy_and_penalties_stay_inside_the_grammar(tok_loaded) -> None:
    [q] = tok_loaded.tokenizer.encode("q")
    params = SamplingParams(temperature=0.0, max_tokens=10, repetition_penalty=2.0,
                            logit_bias=((q, 100.0),),  # pushes for a token outside
                            structured=StructuredOutput.regex("(ab)+", "guided_regex"))
    [done] = tok_engine(tok_loaded).generate(["the cat"], params)
    assert re.fullmatch("(ab)+", done.text)


def test_an_uncompilable_grammar_is_refused_at_add(tok_loaded) -> None:
    with pytest.raises(RequestError) as info:
        tok_engine(tok_loaded).add_request(
            "x", SamplingParams(structured=StructuredOutput.regex("(", "guided_regex")))
    assert info.value.param == "guided_regex"


@pytest.fixture(scope="module")
def smollm2():
    from shunter.engine.loader import load_model

    try:
        return load_model("smollm2-135m")
    except ModelError as exc:
        pytest.skip(f"SmolLM2 not obtainable here: {exc}")


def chat(loaded, question: str) -> str:
    return loaded.tokenizer.apply_chat_template([{"role": "user", "content": question}])


@pytest.mark.slow
def test_smollm2_json_mode_parses_and_json_schema_validates(smollm2) -> None:
    engine = LLMEngine(EngineConfig(num_blocks=128), loaded=smollm2)
    cat = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
           "properties": {"name": {"type": "string", "maxLength": 20},
                          "age": {"type": "integer", "minimum": 0}}}
    prompts = [chat(smollm2, "Describe a cat as a JSON object with its name and age."),
               chat(smollm2, "Describe a cat with its name and age."),
               chat(smollm2, "List three colors in JSON.")]
    params = [SamplingParams(temperature=0.0, max_tokens=60,
                             structured=StructuredOutput.json_object()),
              SamplingParams(temperature=0.0, max_tokens=60,
                             structured=StructuredOutput.json_schema(cat)),
              SamplingParams(seed=3, temperature=0.7, max_tokens=60,
                             structured=StructuredOutput.json_object())]
    done = engine.generate(prompts, params)
    assert all(c.finish_reason == FinishReason.STOP for c in done), [c.text for c in done]
    first, described, colors = (json.loads(c.text) for c in done)
    assert isinstance(first, dict) and isinstance(colors, dict)
    assert set(described) == {"name", "age"} and isinstance(described["name"], str)
    assert isinstance(described["age"], int) and described["age"] >= 0
