"""The reference engine as a gateway backend: `EngineBackend` implements the backend protocol
(`shunter.backend.protocol.EngineClient`) over an `AsyncEngineClient`, and `engine_backends`
builds the in-process replicas of one model (they share its weights).

A request with `n` choices runs as n engine requests submitted together (they share the
prompt's cached blocks); their outputs merge into one stream of chunks whose `index` is the
choice. What the engine cannot do is refused up front by `unsupported` (the request fields it
knows are listed below, per endpoint, with the reason each is accepted).

Its KV-cache events can be published on ZMQ in vLLM's format (`publish_kv_events`, for a
gateway in front of this one) and read on the gateway's loop (`feed_kv_events`, for this
gateway's own exact prefix index); both are set up before the first request.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from shunter.backend.protocol import (
    BackendError,
    BackendLoad,
    GenerateChunk,
    GenerateRequest,
    TokenLogprob,
    Usage,
)
from shunter.core.kv.events import KvEvent
from shunter.core.types import FinishReason
from shunter.engine.async_client import AsyncEngineClient, EngineDeadError
from shunter.engine.choices import merged_outputs, protocol_logprobs
from shunter.engine.config import EngineConfig
from shunter.engine.endpoints import engine_endpoint
from shunter.engine.kv_events import ZmqKvEventPublisher
from shunter.engine.llm import LLMEngine
from shunter.engine.loader import load_model
from shunter.engine.outputs import EngineOutput, TokenLogprobs
from shunter.engine.request_params import choice_params, sampling_params
from shunter.errors import RequestError

__all__ = ["CHAT_PARAMS", "COMPLETION_PARAMS", "EngineBackend", "engine_backends"]

# Every top-level request field the engine accepts, per endpoint: OpenAI's parameters (its API
# reference) and the vLLM extras it implements. Honoured: the sampling fields (typed in
# GenerateRequest, or read by `request_params`), n, stream/stream_options and priority (the
# gateway's), add_generation_prompt, tools when the chat template renders them. Ignored, as
# harmless: user, metadata, store, service_tier, safety_identifier, prompt_cache_key and
# prompt_cache_retention (prefix caching is automatic), prediction (a latency hint),
# parallel_tool_calls, spaces_between_special_tokens, guided_decoding_backend (there is one),
# request_id, program_id and session_id (Shunter's). The fields in _ONLY_AT are accepted only
# at the values listed there (what the engine does anyway) or null: anything else is refused.
_SAMPLING = frozenset({
    "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop",
    "seed", "logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "user",
    "response_format", "top_k", "min_p", "repetition_penalty", "min_tokens", "stop_token_ids",
    "ignore_eos", "priority", "skip_special_tokens", "spaces_between_special_tokens",
    "allowed_token_ids", "guided_json", "guided_regex", "guided_choice", "structured_outputs",
    "guided_decoding_backend", "request_id", "program_id", "session_id",
    # refused unless at the value in _ONLY_AT
    "use_beam_search", "length_penalty", "include_stop_str_in_output", "add_special_tokens",
    "truncate_prompt_tokens", "prompt_logprobs", "bad_words", "return_tokens_as_token_ids",
    "return_token_ids", "logits_processors", "cache_salt", "kv_transfer_params", "vllm_xargs",
    "guided_grammar", "guided_whitespace_pattern", "structural_tag",
})
CHAT_PARAMS = _SAMPLING | frozenset({
    "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
    "parallel_tool_calls", "functions", "function_call", "metadata", "store", "service_tier",
    "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prediction",
    "add_generation_prompt",
    # refused unless at the value in _ONLY_AT
    "modalities", "audio", "web_search_options", "reasoning_effort", "verbosity", "echo",
    "continue_final_message", "chat_template", "chat_template_kwargs", "documents",
    "mm_processor_kwargs",
})
COMPLETION_PARAMS = _SAMPLING | frozenset({"prompt", "echo", "best_of", "suffix"})
_REFUSED = frozenset({
    "use_beam_search", "length_penalty", "include_stop_str_in_output", "add_special_tokens",
    "truncate_prompt_tokens", "prompt_logprobs", "bad_words", "return_tokens_as_token_ids",
    "return_token_ids", "logits_processors", "cache_salt", "kv_transfer_params", "vllm_xargs",
    "guided_grammar", "guided_whitespace_pattern", "structural_tag", "modalities", "audio",
    "web_search_options", "reasoning_effort", "verbosity", "continue_final_message",
    "chat_template", "chat_template_kwargs", "documents", "mm_processor_kwargs", "suffix",
})
_ONLY_AT: dict[str, tuple[object, ...]] = {
    "use_beam_search": (False,), "length_penalty": (1.0,), "include_stop_str_in_output": (False,),
    "return_tokens_as_token_ids": (False,), "return_token_ids": (False,), "bad_words": ([],),
    "continue_final_message": (False,), "chat_template_kwargs": ({},), "suffix": ("",),
    "modalities": (["text"],), "logits_processors": ([],),
}
_WHY = {
    "reasoning_effort": "this model does not reason",
    "verbosity": "this model has no verbosity control",
    "use_beam_search": "beam search is not implemented",
    "audio": "this model has no audio output", "web_search_options": "the engine cannot search",
    "cache_salt": "the engine's prefix cache has no salting",
}
MAX_PROMPT_CHARS_TO_COUNT = 20_000  # longer text prompts are not tokenized just to check


class EngineBackend:
    """An in-process `AsyncEngineClient` seen through the backend protocol."""

    __slots__ = ("_choice_ids", "engine", "is_dead", "is_started", "kv_block_size",
                 "kv_publisher", "max_num_seqs")

    def __init__(self, engine: AsyncEngineClient, *, max_num_seqs: int,
                 kv_block_size: int | None = None) -> None:
        self.engine = engine
        self.max_num_seqs = max_num_seqs
        self.kv_block_size = kv_block_size  # its engine's block size (the events' unit)
        self.kv_publisher: ZmqKvEventPublisher | None = None
        self.is_started = False
        self.is_dead = False
        self._choice_ids: dict[str, list[str]] = {}  # a request's engine requests (n > 1)

    def publish_kv_events(self, endpoint: str, replay_endpoint: str | None = None) -> None:
        """Publish the engine's KV-cache events on `endpoint` (bound; with a replay socket at
        `replay_endpoint`), as vLLM does; ValueError if an address is bad or taken."""
        if self.kv_publisher is not None:
            raise RuntimeError("this engine already publishes its KV events")
        publisher = ZmqKvEventPublisher(endpoint, replay_endpoint=replay_endpoint)
        try:
            self.engine.add_kv_event_sink(publisher.publish)
        except BaseException:
            publisher.close()
            raise
        self.kv_publisher = publisher

    def stop_kv_events(self) -> None:
        """Stop publishing KV events (closes the publisher's sockets)."""
        if self.kv_publisher is not None:
            self.kv_publisher.close()
            self.kv_publisher = None

    def feed_kv_events(self, on_events: Callable[[list[KvEvent]], None]) -> None:
        """Call `on_events` with each step's KV-cache events, on the loop that starts the
        engine (in order with its outputs)."""
        self.engine.add_kv_event_sink(on_events, on_loop=True)

    def _prompt(self, request: GenerateRequest) -> str | list[int]:
        tokenizer = self.engine.tokenizer
        if request.resume_token_ids is not None:  # failover by tokens: continue these
            return list(request.resume_token_ids)
        if request.messages is None:
            if isinstance(request.prompt, tuple):
                tail = [] if not request.continuation else \
                    tokenizer.backend.encode(request.continuation, add_special_tokens=False).ids
                return [*request.prompt, *tail]
            return (request.prompt or "") + request.continuation
        body = request.body or {}
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        tools = body.get("tools") or None
        add_generation_prompt = body.get("add_generation_prompt", True) is not False
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt, tools=tools)
        except RequestError as exc:
            raise BackendError(str(exc), status_code=400) from None
        return text + request.continuation

    def _echo(self, request: GenerateRequest) -> str | None:
        """The prompt text a completions `echo` returns first (not again on a replay)."""
        if not request.echo or request.messages is not None or request.continuation:
            return None
        if isinstance(request.prompt, tuple):
            tokenizer = self.engine.tokenizer
            return "" if tokenizer is None else \
                tokenizer.decode(request.prompt, skip_special_tokens=False)
        return request.prompt or ""

    def unsupported(self, request: GenerateRequest) -> tuple[str, str] | None:
        body = request.body or {}
        known = CHAT_PARAMS if request.is_chat else COMPLETION_PARAMS
        endpoint = "chat completions" if request.is_chat else "completions"
        # vLLM's defaults: special tokens added to a completions prompt, not to a chat one
        only_at = {**_ONLY_AT, "add_special_tokens": (not request.is_chat,),
                   "echo": (False,) if request.is_chat else (False, True)}
        for name, value in body.items():
            if name not in known:
                return name, f"is not a {endpoint} parameter this engine knows"
            if value is not None and name in _REFUSED | {"echo"} and \
                    value not in only_at.get(name, ()):
                allowed = " or ".join(repr(v) for v in only_at.get(name, ()))
                return name, _WHY.get(name, "is not supported by this engine"
                                      + (f" (only {allowed})" if allowed else ""))
        best_of = body.get("best_of")
        if best_of is not None and best_of != request.n:
            return "best_of", "is not supported by this engine (only equal to n)"
        return self._tool_refusal(body) or self._sampling_refusal(request)

    def _tool_refusal(self, body: Mapping[str, Any]) -> tuple[str, str] | None:
        for name in ("functions", "function_call"):
            if body.get(name) not in (None, [], "none"):
                return name, "is deprecated and not supported; send tools"
        choice = body.get("tool_choice")
        if not body.get("tools") and choice in (None, "none"):
            return None
        tokenizer = self.engine.tokenizer
        has_tools = tokenizer is not None and tokenizer.supports_tools  # parses the template
        if body.get("tools") and not has_tools:
            return "tools", "this model's chat template has no tool support"
        if choice not in (None, "none") and not (has_tools and choice == "auto"):
            return "tool_choice", ("this model's chat template has no tool support"
                                   if not has_tools else "only 'auto' and 'none' are supported")
        return None

    def _sampling_refusal(self, request: GenerateRequest) -> tuple[str, str] | None:
        tokenizer = self.engine.tokenizer
        try:
            params = sampling_params(request)
        except RequestError as exc:
            return exc.param or "body", str(exc)
        if tokenizer is None:
            if request.messages is not None or isinstance(request.prompt, str):
                return ("messages" if request.is_chat else "prompt",
                        "this model has no tokenizer: send token ids")
            if params.stop:
                return "stop", "needs a tokenizer; this model has none"
            if params.structured is not None:
                return params.structured.param, "needs a tokenizer; this model has none"
        if params.structured is not None:
            error = params.structured.error()
            if error is not None:
                return params.structured.param, f"cannot be compiled: {error}"
        vocab = self.engine.vocab_size
        for param, token_ids in params.token_ids_used.items():
            if any(t >= vocab for t in token_ids):
                return param, f"names a token id outside the vocabulary [0, {vocab})"
        return self._length_refusal(request)

    def _length_refusal(self, request: GenerateRequest) -> tuple[str, str] | None:
        """max_tokens past the context the prompt leaves, when counting the prompt is cheap."""
        if request.max_tokens is None or request.messages is not None:
            return None
        if isinstance(request.prompt, tuple):
            num_prompt_tokens = len(request.prompt)
        elif len(request.prompt or "") <= MAX_PROMPT_CHARS_TO_COUNT:
            num_prompt_tokens = len(self.engine.tokenizer.encode(request.prompt or ""))
        else:
            num_prompt_tokens = 1
        context = self.engine.max_model_len
        if num_prompt_tokens + request.max_tokens > context:
            return "max_tokens", (f"this model's context length is {context} tokens; the prompt "
                                  f"has {num_prompt_tokens} and max_tokens asks for "
                                  f"{request.max_tokens}")
        return None

    def submit(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        return self._run(request)

    def ensure_started(self) -> None:
        """Start the engine's step thread, once: it posts to the loop that starts it (the
        server's), so the first request (or a prefill replica handing off here) starts it."""
        if not self.is_started:
            self.engine.start()
            self.is_started = True

    async def _run(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        self.ensure_started()
        try:
            params = choice_params(sampling_params(request), request.n)
            ids = [request.request_id] if request.n == 1 else \
                [f"{request.request_id}/{i}" for i in range(request.n)]
            self._choice_ids[request.request_id] = ids
            prompt = self._prompt(request)
            # a stream that may fail over by tokens reports them: the prompt's (tokenized here,
            # once, instead of in the engine) and each output's
            with_ids = request.stream and request.is_token_resumable
            prompt_ids: tuple[int, ...] | None = None
            if with_ids and self.engine.tokenizer is not None:
                if isinstance(prompt, str):
                    prompt = self.engine.tokenizer.encode(prompt)
                prompt_ids = tuple(prompt)
            await self.engine.submit_many(
                prompt, params, request_ids=ids, priority=request.priority,
                tenant=request.tenant, session_id=request.session_id,
                program_id=request.program_id,
                predicted_output_tokens=request.predicted_output_tokens)
            echo = self._echo(request)
            started = [False] * request.n
            totals: dict[int, EngineOutput] = {}
            async with contextlib.aclosing(merged_outputs(self.engine, ids)) as outputs:
                async for index, out in outputs:
                    if out.finish_reason is FinishReason.ABORT:
                        raise BackendError("the engine aborted the request")
                    totals[index] = out
                    chunk = self._chunk(request, index, out, totals)
                    if prompt_ids is not None:
                        chunk = replace(chunk, token_ids=out.new_token_ids, prompt_token_ids=(
                            prompt_ids if not started[index] else None))
                    if not started[index] and echo is not None:
                        chunk = replace(chunk, text=echo + chunk.text, logprobs=(
                            self._logprobs(request, out.prompt_logprobs or ()) + chunk.logprobs))
                    started[index] = True
                    yield chunk
        except RequestError as exc:
            raise BackendError(str(exc), status_code=400, param=exc.param,
                               code=exc.code) from None
        except EngineDeadError as exc:
            self.is_dead = True
            raise BackendError(f"engine replica died: {exc.__cause__}") from None
        finally:
            self._choice_ids.pop(request.request_id, None)

    def _chunk(self, request: GenerateRequest, index: int, out: EngineOutput,
               totals: dict[int, EngineOutput]) -> GenerateChunk:
        # usage over all choices: each choice counts the prompt once (as vLLM reports)
        usage = Usage(out.num_prompt_tokens * request.n,
                      sum(o.num_output_tokens for o in totals.values()))
        cached = sum(o.num_cached_tokens for o in totals.values())
        return GenerateChunk(out.text, None if out.finish_reason is None
                             else str(out.finish_reason), usage, cached, index=index,
                             logprobs=self._logprobs(request, out.logprobs))

    def _logprobs(self, request: GenerateRequest, entries: Sequence[TokenLogprobs],
                  ) -> tuple[TokenLogprob, ...]:
        return protocol_logprobs(self.engine.tokenizer, entries, lists_chosen=not request.is_chat)

    def resumes_by_tokens(self) -> bool:
        return self.engine.tokenizer is not None

    async def abort(self, request_id: str) -> None:
        for engine_id in self._choice_ids.get(request_id, [request_id]):
            await self.engine.abort(engine_id)

    async def load(self) -> BackendLoad | None:
        stats = self.engine.load()
        return BackendLoad(num_waiting=stats.num_waiting, num_running=stats.num_running,
                           kv_usage=stats.kv_usage, num_preemptions=stats.num_preemptions,
                           num_free_blocks=stats.num_free_blocks,
                           num_total_blocks=stats.num_total_blocks)

    async def health(self) -> bool:
        return not self.is_dead

    async def request(self, path: str, body: Mapping[str, Any]) -> tuple[int, bytes]:
        return engine_endpoint(self.engine.tokenizer, self.engine.max_model_len, path, body)

    async def close(self) -> None:
        if self.is_started:
            await self.engine.close()
        self.stop_kv_events()


def engine_backends(config: EngineConfig, num_replicas: int) -> list[EngineBackend]:
    """`num_replicas` engines of `config.model`, loaded once (they share the weights on disk
    and in memory), each with `config` (its policy, threads, ...)."""
    loaded = load_model(config.model, config.cache_dir)
    engines = [LLMEngine(config, loaded=loaded)]
    # a budget the first one measured (sarathi) holds for its identical siblings
    budget = engines[0].scheduler.config.max_num_batched_tokens
    config = replace(config, scheduler={**config.scheduler, "max_num_batched_tokens": budget})
    engines += [LLMEngine(config, loaded=loaded) for _ in range(num_replicas - 1)]
    return [EngineBackend(AsyncEngineClient(e), max_num_seqs=config.max_num_seqs,
                          kv_block_size=config.block_size) for e in engines]
