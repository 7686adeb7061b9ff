"""Text and chat prompts' token ids, as a backend tokenizes them, for the exact prefix index.

The routers' exact prefix index (`router/exact_index.py`) matches token ids. A client that sent
text (a completion prompt, chat messages) gave none, and the gateway has no tokenizer: when a
replica that may take the request publishes its KV events and its history is complete
(`KvEventSubscriber.is_exact`), the pool asks one such backend's /tokenize (vLLM's; in-process
engines and the fake serve it too, through `EngineClient.request`, as `forward.py` forwards it)
for the prompt as generation will see it. The body mirrors vLLM 0.32's
(`entrypoints/serve/tokenize/protocol.py` against `openai/{completion,chat_completion}/protocol.py`):

- completions: {"model", "prompt", "add_special_tokens"} (absent: vLLM's default for both, True);
- chat: {"model", "messages"} as the client sent them, its add_generation_prompt,
  continue_final_message, add_special_tokens, chat_template, tools, mm_processor_kwargs and
  media_io_kwargs as they are, and chat_template_kwargs with documents, reasoning_effort and
  enable_thinking folded in as `ChatCompletionRequest.build_chat_params` folds them (the two
  endpoints then merge add_generation_prompt and continue_final_message on top alike).
  /tokenize takes no tool_choice or response_format, which a few templates read: such a
  prompt's ids may differ from generation's, which costs its match, never its answer.

Only routing reads the ids; the backend is sent the client's body, unchanged. A prompt whose
blocks match nothing plain (`cache_salt`) or that the backend cuts (`truncate_prompt_tokens`)
asks nothing. Bounded: one round trip of at most `timeout_s`. A failure or timeout routes that
request on the approximation; it is counted (`shunter_prompt_tokenize_total{outcome}`), logged
once (then at DEBUG), and that backend is not asked again for `RETRY_AFTER_S`, so a tokenizer
slowed by load does not add `timeout_s` to every request. Answers are kept in an LRU keyed by
the tokenize body and bounded in tokens: a repeated prompt (a retried or re-sent request, one
prompt fanned out to many calls) costs a dict lookup instead of a round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from shunter.backend.protocol import GenerateRequest
from shunter.gateway.metrics import Counter
from shunter.gateway.replica import Replica

__all__ = ["RETRY_AFTER_S", "BackendTokenizer", "NoTokenIds", "tokenize_body"]

log = logging.getLogger("shunter.gateway")

TOKENIZE_PATH = "/tokenize"
RETRY_AFTER_S = 10.0  # a backend whose /tokenize failed is not asked again for this long
# chat fields vLLM's TokenizeChatRequest takes as the chat request has them
_CHAT_FIELDS = ("add_generation_prompt", "continue_final_message", "add_special_tokens",
                "chat_template", "tools", "mm_processor_kwargs", "media_io_kwargs")
# chat fields `build_chat_params` folds into the template's kwargs (None: left out)
_TEMPLATE_FIELDS = ("documents", "reasoning_effort")
_NO_EXACT_MATCH = ("cache_salt", "truncate_prompt_tokens")
_UNSET = (None, "auto")  # vLLM's `merge_kwargs` drops these


def tokenize_body(request: GenerateRequest) -> dict[str, Any] | None:
    """The /tokenize body whose ids are `request`'s prompt as the backend will generate from
    it; None when there is nothing to ask (token ids already, or ids that could match nothing)."""
    body: Mapping[str, Any] = request.body or {}
    if any(body.get(name) is not None for name in _NO_EXACT_MATCH):
        return None
    if request.messages is None:
        if not isinstance(request.prompt, str) or not request.prompt:
            return None
        out: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
        if body.get("add_special_tokens") is not None:
            out["add_special_tokens"] = body["add_special_tokens"]
        return out
    messages = body.get("messages")
    if not isinstance(messages, list):  # a request built without its JSON (tests, engines)
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
    out = {"model": request.model, "messages": messages}
    out.update((name, body[name]) for name in _CHAT_FIELDS if body.get(name) is not None)
    kwargs = dict(body.get("chat_template_kwargs") or {})
    folded = {name: body.get(name) for name in _TEMPLATE_FIELDS}
    if folded["reasoning_effort"] is not None and "enable_thinking" not in kwargs:
        folded["enable_thinking"] = folded["reasoning_effort"] != "none"
    kwargs.update((k, v) for k, v in folded.items() if v not in _UNSET)
    if kwargs:
        out["chat_template_kwargs"] = kwargs
    return out


class NoTokenIds(ValueError):
    """A /tokenize answer without the prompt's ids; `status_code`: its HTTP status."""

    def __init__(self, why: str, status_code: int) -> None:
        super().__init__(why)
        self.status_code = status_code

    @property
    def is_request_fault(self) -> bool:
        """The prompt's fault (a template refusing it), not the backend's."""
        return self.status_code in (400, 422)


def _token_ids(status: int, answer: bytes, loads: Callable[[bytes], Any]) -> tuple[int, ...]:
    """The ids of a /tokenize answer; NoTokenIds (or ValueError: not JSON) saying why not."""
    if status != 200:
        raise NoTokenIds(f"HTTP {status}: {answer[:200]!r}", status)
    decoded = loads(answer)
    tokens = decoded.get("tokens") if isinstance(decoded, dict) else None
    if not isinstance(tokens, list) or not tokens or set(map(type, tokens)) != {int}:
        raise NoTokenIds(f"no token ids in the answer: {answer[:200]!r}", status)
    return tuple(tokens)


class BackendTokenizer:
    """Prompts' token ids from a backend's /tokenize: bounded in time, cached, never failing."""

    __slots__ = ("_cache", "_dumps", "_is_logged", "_loads", "_num_cached_tokens", "_retry_at",
                 "clock", "max_cached_tokens", "outcomes", "timeout_s")

    def __init__(self, timeout_s: float, max_cached_tokens: int,
                 clock: Callable[[], float]) -> None:
        self.timeout_s = timeout_s
        self.max_cached_tokens = max_cached_tokens
        self.clock = clock
        self.outcomes = Counter("shunter_prompt_tokenize_total", "Text and chat prompts "
                                "tokenized for the exact prefix index, by outcome (tokenized, "
                                "cached, failed: routed on the approximation).", ("outcome",))
        self._cache: OrderedDict[Hashable, tuple[int, ...]] = OrderedDict()
        self._num_cached_tokens = 0
        self._retry_at: dict[int, float] = {}  # replica id -> when to ask it again
        self._is_logged = False
        # orjson (the gateway extra) when a pool is built, not at import: `config.py` imports
        # this module through `pool.py` in a core-only install too
        from shunter.gateway import jsonio

        self._loads, self._dumps = jsonio.loads, jsonio.dumps

    async def token_ids(self, request: GenerateRequest,
                        replicas: Sequence[Replica]) -> tuple[int, ...] | None:
        """`request`'s prompt ids from the least busy of `replicas` (those whose exact state
        could use them), or from the cache; None: route it on the approximation."""
        body = tokenize_body(request)
        if body is None:
            return None
        key: Hashable = (body["model"], body.get("add_special_tokens"), body["prompt"]) \
            if "prompt" in body else self._dumps(body)
        ids = self._cache.get(key)
        if ids is not None:
            self._cache.move_to_end(key)
            self.outcomes.inc(("cached",))
            return ids
        now = self.clock()
        askable = [r for r in replicas if self._retry_at.get(r.replica_id, now) <= now]
        if not askable:
            return None
        replica = min(askable, key=lambda r: (r.num_in_flight, r.replica_id))
        try:
            async with asyncio.timeout(self.timeout_s):  # (no task, unlike wait_for)
                status, answer = await replica.client.request(TOKENIZE_PATH, body)
            ids = _token_ids(status, answer, self._loads)
        except Exception as exc:  # noqa: BLE001 - any failure: this request routes approximately
            self._on_failure(replica, exc)
            return None
        self.outcomes.inc(("tokenized",))
        self._remember(key, ids)
        return ids

    def _on_failure(self, replica: Replica, exc: Exception) -> None:
        self.outcomes.inc(("failed",))
        if not (isinstance(exc, NoTokenIds) and exc.is_request_fault):  # else: ask again
            self._retry_at[replica.replica_id] = self.clock() + RETRY_AFTER_S
        why = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        log.log(logging.DEBUG if self._is_logged else logging.WARNING,
                "/tokenize on backend %s failed (%s): text and chat prompts route on the "
                "approximate prefix index meanwhile (counted in shunter_prompt_tokenize_total)",
                replica.name, why)
        self._is_logged = True

    def _remember(self, key: Hashable, ids: tuple[int, ...]) -> None:
        if len(ids) > self.max_cached_tokens:
            return
        old = self._cache.pop(key, None)  # (asked twice at once)
        self._num_cached_tokens += len(ids) - (0 if old is None else len(old))
        self._cache[key] = ids
        while self._num_cached_tokens > self.max_cached_tokens:
            _, old = self._cache.popitem(last=False)
            self._num_cached_tokens -= len(old)

