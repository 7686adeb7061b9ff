"""Scripted OpenAI answers, as vLLM or OpenAI itself would send them, for the recording server.

A `Script` holds the choices (text tokens with logprobs and top alternatives, tool calls,
refusals, finish and vLLM stop reasons); `ScriptedAnswer` turns it into the answer to one
request, honouring what the request asked: `n` (the script's choices cycle), `logprobs` and
`top_logprobs` (logprobs only when asked, cut to the asked number), `stream_options`
(`include_usage`: a final usage event with `prompt_tokens_details`; vLLM's
`continuous_usage_stats`: cumulative usage on every event).

Styles: `"vllm"` (the last token's event carries finish_reason and `stop_reason`; the
`system_fingerprint` rides on terminal events, or only on the usage event when include_usage
is on; a tool call streams as an id-and-name event, then argument deltas) and `"openai"`
(`refusal: null` in the role delta, `"arguments": ""` with the name, a separate empty
terminal delta, the fingerprint and, with include_usage, `"usage": null` on every event).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CREATED", "Script", "ScriptedAnswer", "ScriptedChoice", "Token", "ToolCall",
           "text_choice"]

CREATED = 1_700_000_000


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    logprob: float = -0.125
    top: tuple[tuple[str, float], ...] = ()  # alternatives, best first


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str  # JSON text, streamed in `num_pieces` deltas
    num_pieces: int = 3

    @property
    def pieces(self) -> list[str]:
        size = -(-len(self.arguments) // self.num_pieces) or 1
        return [self.arguments[i:i + size] for i in range(0, len(self.arguments), size)]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptedChoice:
    tokens: tuple[Token, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str | None = None
    finish_reason: str = "stop"
    stop_reason: int | str | None = None


def text_choice(*texts: str, **kwargs: Any) -> ScriptedChoice:
    return ScriptedChoice(tokens=tuple(Token(t, -0.5 - i / 8, ((t, -0.5 - i / 8), ("x", -3.25),
                                                                 ("y", -4.0)))
                                       for i, t in enumerate(texts)), **kwargs)


@dataclass(frozen=True, slots=True, kw_only=True)
class Script:
    choices: tuple[ScriptedChoice, ...] = (text_choice("Hello", " there", "!"),)
    style: str = "vllm"  # or "openai"
    prompt_tokens: int = 11
    cached_tokens: int = 3
    system_fingerprint: str = "fp_recorded"
    error: dict[str, Any] | None = None  # answer with this error object instead
    error_status: int = 400


def _logprob_entry(token: Token, num_top: int) -> dict[str, Any]:
    return {"token": token.text, "logprob": token.logprob, "bytes": list(token.text.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                             for t, lp in token.top[:num_top]]}


def _completion_logprobs(tokens: tuple[Token, ...], num_top: int, offset: int) -> dict[str, Any]:
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.text)
    return {"text_offset": offsets, "token_logprobs": [t.logprob for t in tokens],
            "tokens": [t.text for t in tokens],
            "top_logprobs": [dict(t.top[:num_top]) for t in tokens]}


@dataclass(slots=True)
class ScriptedAnswer:
    """One request's answer, built from the script and what the request asked."""

    script: Script
    body: dict[str, Any]
    is_chat: bool

    @property
    def choices(self) -> list[ScriptedChoice]:
        n = self.body.get("n") or 1
        return [self.script.choices[i % len(self.script.choices)] for i in range(n)]

    @property
    def num_top(self) -> int | None:  # None: no logprobs asked
        if self.is_chat:
            return (self.body.get("top_logprobs") or 0) if self.body.get("logprobs") else None
        return self.body.get("logprobs")

    def usage(self, num_tokens: int) -> dict[str, Any]:
        prompt = self.script.prompt_tokens
        return {"prompt_tokens": prompt, "completion_tokens": num_tokens,
                "total_tokens": prompt + num_tokens,
                "prompt_tokens_details": {"cached_tokens": self.script.cached_tokens}}

    def _steps(self, choice: ScriptedChoice) -> list[tuple[dict[str, Any], list[Token]]]:
        """(delta, its tokens) per event of one choice, before the terminal one."""
        if not self.is_chat:
            return [({"text": t.text}, [t]) for t in choice.tokens]
        steps: list[tuple[dict[str, Any], list[Token]]] = [({"content": t.text}, [t])
                                                           for t in choice.tokens]
        if choice.refusal:
            steps += [({"refusal": choice.refusal[i:i + 4]}, [])
                      for i in range(0, len(choice.refusal), 4)]
        for j, call in enumerate(choice.tool_calls):
            function = {"name": call.name}
            if self.script.style == "openai":
                function["arguments"] = ""
            steps.append(({"tool_calls": [{"index": j, "id": call.call_id, "type": "function",
                                           "function": function}]}, []))
            steps += [({"tool_calls": [{"index": j, "function": {"arguments": piece}}]}, [])
                      for piece in call.pieces]
        return steps

    def _logprobs(self, tokens: list[Token] | tuple[Token, ...], offset: int) -> Any:
        if self.num_top is None or not tokens:
            return None
        if not self.is_chat:
            return _completion_logprobs(tuple(tokens), self.num_top, offset)
        out: dict[str, Any] = {"content": [_logprob_entry(t, self.num_top) for t in tokens]}
        if self.script.style == "openai":
            out["refusal"] = None
        return out

    def _choice_events(self, i: int, choice: ScriptedChoice) -> list[tuple[dict[str, Any], int]]:
        """(choice item, completion tokens so far) per event of choice `i`."""
        items: list[tuple[dict[str, Any], int]] = []
        if self.is_chat:
            role = {"role": "assistant", "content": ""}
            if self.script.style == "openai":
                role["refusal"] = None
            items.append(({"index": i, "delta": role, "logprobs": None, "finish_reason": None}, 0))
        offset = 0
        for k, (delta, tokens) in enumerate(self._steps(choice), 1):
            head = {"delta": delta} if self.is_chat else delta
            items.append(({"index": i, **head, "logprobs": self._logprobs(tokens, offset),
                           "finish_reason": None}, k))
            offset += sum(len(t.text) for t in tokens)
        end = {"finish_reason": choice.finish_reason, "stop_reason": choice.stop_reason}
        if self.script.style == "openai" or len(items) == int(self.is_chat):
            empty = {"delta": {}} if self.is_chat else {"text": ""}
            items.append(({"index": i, **empty, "logprobs": None, **end}, items[-1][1]
                          if items else 0))
        else:
            items[-1][0].update(end)
        return items

    def events(self) -> list[dict[str, Any]]:
        """Every SSE event of a stream, the choices interleaved round robin."""
        style, options = self.script.style, self.body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        continuous = include_usage and bool(options.get("continuous_usage_stats"))
        kind = "chat.completion.chunk" if self.is_chat else "text_completion"
        head = {"id": "rec-1", "object": kind, "created": CREATED, "model": self.body["model"]}
        per_choice = [self._choice_events(i, c) for i, c in enumerate(self.choices)]
        events = []
        for step in range(max(len(items) for items in per_choice)):
            for items in per_choice:
                if step >= len(items):
                    continue
                item, num_tokens = items[step]
                event = {**head, "choices": [item]}
                if step == 0 and self.is_chat and style == "vllm":  # vLLM's first event
                    event.update(prompt_token_ids=self.prompt_token_ids, prompt_text=None)
                if style == "openai" or (item["finish_reason"] is not None
                                         and not include_usage):
                    event["system_fingerprint"] = self.script.system_fingerprint
                if style == "openai" and include_usage:
                    event["usage"] = None
                elif continuous:
                    prompt = self.script.prompt_tokens
                    event["usage"] = {"prompt_tokens": prompt, "completion_tokens": num_tokens,
                                      "total_tokens": prompt + num_tokens}
                events.append(event)
        if include_usage:
            events.append({**head, "choices": [], "usage": self.usage(self.num_tokens),
                           "system_fingerprint": self.script.system_fingerprint})
        return events

    @property
    def prompt_token_ids(self) -> list[int] | None:  # vLLM's, with `return_token_ids`
        return list(range(1, self.script.prompt_tokens + 1)) \
            if self.body.get("return_token_ids") else None

    @property
    def num_tokens(self) -> int:
        return sum(len(self._steps(c)) for c in self.choices)

    def whole(self) -> dict[str, Any]:
        choices = []
        for i, c in enumerate(self.choices):
            item: dict[str, Any] = {"index": i}
            if self.is_chat:
                calls = [{"id": t.call_id, "type": "function",
                          "function": {"name": t.name, "arguments": t.arguments}}
                         for t in c.tool_calls]
                message = {"role": "assistant", "content": "".join(t.text for t in c.tokens)
                           if c.tokens else None, "refusal": c.refusal, "tool_calls": calls}
                if self.script.style == "vllm":
                    message.update(annotations=None, audio=None, function_call=None,
                                   reasoning=None)
                item["message"] = message
            else:
                item["text"] = "".join(t.text for t in c.tokens)
            item.update(logprobs=self._logprobs(c.tokens, 0), finish_reason=c.finish_reason,
                        stop_reason=c.stop_reason)
            choices.append(item)
        return {"id": "rec-1", "object": "chat.completion" if self.is_chat else "text_completion",
                "created": CREATED, "model": self.body["model"], "choices": choices,
                "service_tier": None, "system_fingerprint": self.script.system_fingerprint,
                "usage": self.usage(self.num_tokens), "prompt_logprobs": None,
                "prompt_token_ids": self.prompt_token_ids,
                "kv_transfer_params": None}


