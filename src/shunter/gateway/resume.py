"""Failover by tokens against an OpenAI-compatible server (vLLM's `return_token_ids`).

A stream that `is_token_resumable` asks the backend for token ids (vLLM 0.10.2+:
`return_token_ids`, which adds `prompt_token_ids` to the first event and `token_ids` to every
choice); the gateway keeps them and hides them from a client that did not ask. A resumed
request goes to the next backend as a raw completion whose prompt is those ids
(`POST /v1/completions` with a token-id prompt, which vLLM takes for any model), with the
request's sampling fields, and its events come back as plain chunks the gateway renders in the
request's own shape (chat or completion). Greedy decoding then continues exactly where the
failed backend stopped: the next backend sees the very tokens, not a re-tokenized text.
"""

from __future__ import annotations

from typing import Any

from shunter.backend.protocol import GenerateRequest

__all__ = ["resume_payload", "split_token_ids"]

# fields of a chat or completions body a raw completion of the ids keeps (sampling, limits,
# vLLM's extras); everything else (messages, tools, chat template options) is the prompt's
_KEPT = frozenset({
    "temperature", "top_p", "top_k", "min_p", "seed", "stop_token_ids", "ignore_eos",
    "repetition_penalty", "logit_bias", "allowed_token_ids", "bad_words", "skip_special_tokens",
    "spaces_between_special_tokens", "priority", "user", "truncate_prompt_tokens",
    "min_tokens", "cache_salt", "kv_transfer_params", "vllm_xargs"})


def resume_payload(request: GenerateRequest, model: str | None, continuous_usage: bool
                   ) -> dict[str, Any]:
    """The completions body that continues `request` from its `resume_token_ids`."""
    assert request.resume_token_ids is not None
    body = request.body or {}
    out: dict[str, Any] = {k: v for k, v in body.items() if k in _KEPT}
    if request.body is None:
        out.update(temperature=request.temperature, top_p=request.top_p)
        if request.seed is not None:
            out["seed"] = request.seed
        if request.ignore_eos:
            out["ignore_eos"] = True
    out.update(model=model or request.model, prompt=list(request.resume_token_ids),
               stream=True, return_token_ids=True)
    if request.max_tokens is not None:
        out["max_tokens"] = request.max_tokens
    if request.min_tokens or "min_tokens" in out:
        out["min_tokens"] = request.min_tokens
    if request.priority:
        out["priority"] = request.priority
    options: dict[str, Any] = {"include_usage": True}
    if continuous_usage:
        options["continuous_usage_stats"] = True
    out["stream_options"] = options
    return out


def split_token_ids(obj: dict[str, Any], keep: bool
                    ) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """(output ids, prompt ids) of a backend's event (None where it has none), removed from
    the event unless `keep` (the client asked for them itself). ValueError for ids that are
    not lists of integers."""
    prompt = obj.pop("prompt_token_ids", None) if not keep else obj.get("prompt_token_ids")
    output = None
    for choice in obj.get("choices") or ():
        ids = choice.pop("token_ids", None) if not keep else choice.get("token_ids")
        if ids is not None:
            output = _ids(ids) if output is None else (*output, *_ids(ids))
        found = choice.pop("prompt_token_ids", None) if not keep \
            else choice.get("prompt_token_ids")
        prompt = prompt if found is None else found
    return output, None if prompt is None else _ids(prompt)


def _ids(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(i) is int for i in value):
        raise ValueError(f"token ids that are not a list of integers: {str(value)[:80]}")
    return tuple(value)
