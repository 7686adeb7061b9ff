"""A gateway `GenerateRequest` as engine sampling parameters.

The typed fields were validated by the gateway; the few vLLM extras the engine honours that
have no typed field (`allowed_token_ids`, `skip_special_tokens`, `guided_json`,
`guided_regex`, `guided_choice`, `structured_outputs`) are read from the client's body here,
and checked here. Every problem is a RequestError naming the parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from shunter.backend.protocol import GenerateRequest
from shunter.engine.params import SamplingParams
from shunter.engine.structured import StructuredOutput
from shunter.errors import RequestError

__all__ = ["STRUCTURED_OUTPUT_KEYS", "choice_params", "sampling_params", "structured_output"]

SEED_SPACE = 1 << 64  # torch seeds are taken modulo 2**64
# structured_outputs keys honoured (vLLM's StructuredOutputsParams); the rest must be unset
STRUCTURED_OUTPUT_KEYS = frozenset({"json", "regex", "choice", "json_object",
                                    "disable_fallback", "disable_any_whitespace"})


def _response_format(value: Mapping[str, Any]) -> StructuredOutput | None:
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutput.json_object()
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise RequestError("'response_format.json_schema.schema' is required for type "
                               "json_schema", param="response_format.json_schema")
        return StructuredOutput.json_schema(spec["schema"], "response_format.json_schema")
    raise RequestError(f"response_format type {kind!r} is not supported here (text, "
                       "json_object, json_schema)", param="response_format.type")


def _structured_outputs(value: Any) -> list[StructuredOutput]:
    if not isinstance(value, dict):
        raise RequestError("'structured_outputs' must be an object", param="structured_outputs")
    extra = sorted(k for k, v in value.items() if v is not None and k not in STRUCTURED_OUTPUT_KEYS)
    if extra:
        raise RequestError(f"structured_outputs.{extra[0]} is not supported by this engine",
                           param=f"structured_outputs.{extra[0]}")
    asks = []
    if value.get("json") is not None:
        asks.append(StructuredOutput.json_schema(value["json"], "structured_outputs.json"))
    if value.get("regex") is not None:
        asks.append(StructuredOutput.regex(value["regex"], "structured_outputs.regex"))
    if value.get("choice") is not None:
        asks.append(StructuredOutput.choice(value["choice"], "structured_outputs.choice"))
    if value.get("json_object"):
        asks.append(StructuredOutput.json_object("structured_outputs.json_object"))
    return asks


def structured_output(request: GenerateRequest) -> StructuredOutput | None:
    """The request's structured-output ask (at most one), from `response_format` or vLLM's
    `guided_json` / `guided_regex` / `guided_choice` / `structured_outputs`."""
    body = request.body or {}
    asks: list[StructuredOutput] = []
    if request.response_format is not None:
        ask = _response_format(request.response_format)
        asks += [] if ask is None else [ask]
    if body.get("guided_json") is not None:
        asks.append(StructuredOutput.json_schema(body["guided_json"], "guided_json"))
    if body.get("guided_regex") is not None:
        asks.append(StructuredOutput.regex(body["guided_regex"], "guided_regex"))
    if body.get("guided_choice") is not None:
        asks.append(StructuredOutput.choice(body["guided_choice"], "guided_choice"))
    if body.get("structured_outputs") is not None:
        asks += _structured_outputs(body["structured_outputs"])
    if len(asks) > 1:
        raise RequestError("only one kind of structured output may be asked for (got "
                           f"{', '.join(a.param for a in asks)})", param=asks[1].param)
    return asks[0] if asks else None


def _token_id_list(body: Mapping[str, Any], name: str) -> tuple[int, ...] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value):
        raise RequestError(f"'{name}' must be an array of token ids >= 0", param=name)
    return tuple(value)


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"'{name}' must be a boolean", param=name)
    return value


def sampling_params(request: GenerateRequest) -> SamplingParams:
    """The engine's parameters for one choice of `request` (its seed as given)."""
    body = request.body or {}
    return SamplingParams(
        max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
        top_k=None if request.top_k in (None, -1, 0) else request.top_k, min_p=request.min_p,
        seed=request.seed, stop=request.stop, stop_token_ids=request.stop_token_ids,
        ignore_eos=request.ignore_eos, min_tokens=request.min_tokens,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.repetition_penalty, logit_bias=request.logit_bias,
        allowed_token_ids=_token_id_list(body, "allowed_token_ids"),
        logprobs=request.logprobs,
        prompt_logprobs=request.logprobs if request.echo and not request.continuation else None,
        structured=structured_output(request),
        skip_special_tokens=_flag(body, "skip_special_tokens", True))


def choice_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """One parameter set per choice: a seeded request's choice i draws from seed + i (vLLM's
    rule), so no two choices repeat each other."""
    if params.seed is None:
        return [params] * n
    return [replace(params, seed=(params.seed + i) % SEED_SPACE) for i in range(n)]
