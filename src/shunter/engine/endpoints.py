"""The engine's answers to vLLM's /tokenize and /detokenize (the gateway forwards them here).

    POST /tokenize   {"prompt": str, "add_special_tokens": bool}
                     or {"messages": [...], "add_generation_prompt": bool}
                  -> {"count", "max_model_len", "tokens", "token_strs": null}
    POST /detokenize {"tokens": [int, ...]} -> {"prompt": str}

Anything else is a 404 (the engine serves no embeddings or responses API).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shunter.engine.tokenizer import Tokenizer
from shunter.errors import RequestError

__all__ = ["engine_endpoint"]


def _error(status: int, message: str, param: str | None = None) -> tuple[int, bytes]:
    kind = "invalid_request_error" if status == 400 else "not_found_error"
    return status, json.dumps({"error": {"message": message, "type": kind, "param": param,
                                         "code": None}}).encode()


def engine_endpoint(tokenizer: Tokenizer | None, max_model_len: int, path: str,
                    body: Mapping[str, Any]) -> tuple[int, bytes]:
    """(HTTP status, JSON answer) of one of the engine's other endpoints."""
    if path not in ("/tokenize", "/detokenize"):
        return _error(404, f"the in-process engine does not serve {path}")
    if tokenizer is None:
        return _error(400, "this model has no tokenizer")
    if path == "/detokenize":
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(
                isinstance(t, int) and not isinstance(t, bool)
                and 0 <= t < tokenizer.vocab_size for t in tokens):
            return _error(400, f"'tokens' must be an array of token ids in [0, "
                               f"{tokenizer.vocab_size})", "tokens")
        return 200, json.dumps({"prompt": tokenizer.decode(tokens)}).encode()
    if isinstance(body.get("messages"), list):
        try:
            text = tokenizer.apply_chat_template(
                list(body["messages"]),
                add_generation_prompt=bool(body.get("add_generation_prompt", True)))
        except RequestError as exc:
            return _error(400, str(exc), "messages")
    elif isinstance(body.get("prompt"), str):
        text = body["prompt"]
    else:
        return _error(400, "give 'prompt' (a string) or 'messages'", "prompt")
    tokens = tokenizer.encode(text)
    return 200, json.dumps({"count": len(tokens), "max_model_len": max_model_len,
                            "tokens": tokens, "token_strs": None}).encode()
