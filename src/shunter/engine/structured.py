"""Structured output (constrained decoding) through llguidance.

A request may ask that its text match a JSON schema (OpenAI `response_format` json_schema,
json_object as the schema {"type": "object"}, vLLM's `guided_json`), a regular expression
(`guided_regex`) or one of fixed strings (`guided_choice`). `StructuredOutput` is that ask, as
a value; `GrammarCompiler` turns it into a `GrammarMatcher` for the model's tokenizer, which
tells at each step which tokens may come next (a [vocab] mask) and follows the sampled ones.

llguidance reads the engine's tokenizer as the `tokenizers` JSON it serializes to (GGUF or HF
alike), builds its token trie once per compiler (~0.3 s for a 49k vocabulary, on first use) and
computes a mask in tens of microseconds; grammars compile lazily, so a new schema costs
about a millisecond.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass

import llguidance
import tokenizers
import torch

from shunter.engine.logits import unpack_bitmask
from shunter.errors import RequestError

__all__ = ["GrammarCompiler", "GrammarMatcher", "StructuredKind", "StructuredOutput"]

JSON_OBJECT_SCHEMA = '{"type": "object"}'
# JSON laid out as `{"a": 1, "b": [2, 3]}`, no other whitespace: free whitespace lets a small
# model run on in spaces and newlines until max_tokens cuts the JSON short (vLLM's
# disable_any_whitespace, made the default)
JSON_OPTIONS: llguidance.JsonCompileOptions = {
    "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class StructuredKind(enum.StrEnum):
    JSON = "json"  # spec: a JSON schema as JSON text
    REGEX = "regex"  # spec: a regular expression (Rust regex syntax)
    CHOICE = "choice"  # spec: a JSON array of the allowed strings


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """What the generated text must match; `param` names the request field that asked."""

    kind: StructuredKind
    spec: str
    param: str = "response_format"

    @classmethod
    def json_schema(cls, schema: object, param: str = "response_format") -> StructuredOutput:
        if not isinstance(schema, dict | bool):
            raise RequestError(f"'{param}' must be a JSON schema (an object)", param=param)
        return cls(StructuredKind.JSON, json.dumps(schema), param)

    @classmethod
    def json_object(cls, param: str = "response_format") -> StructuredOutput:
        return cls(StructuredKind.JSON, JSON_OBJECT_SCHEMA, param)

    @classmethod
    def regex(cls, pattern: object, param: str) -> StructuredOutput:
        if not isinstance(pattern, str) or not pattern:
            raise RequestError(f"'{param}' must be a non-empty regular expression", param=param)
        return cls(StructuredKind.REGEX, pattern, param)

    @classmethod
    def choice(cls, choices: object, param: str) -> StructuredOutput:
        if (not isinstance(choices, list) or not choices
                or not all(isinstance(c, str) and c for c in choices)):
            raise RequestError(f"'{param}' must be a non-empty array of non-empty strings",
                               param=param)
        return cls(StructuredKind.CHOICE, json.dumps(choices), param)

    @property
    def grammar(self) -> str:
        """The llguidance grammar (its JSON form) for this ask."""
        match self.kind:
            case StructuredKind.JSON:
                return llguidance.LLMatcher.grammar_from_json_schema(
                    self.spec, defaults=JSON_OPTIONS)
            case StructuredKind.REGEX:
                return llguidance.LLMatcher.grammar_from_regex(self.spec)
            case StructuredKind.CHOICE:  # lark string literals take JSON escapes
                options = " | ".join(json.dumps(c, ensure_ascii=False)
                                     for c in json.loads(self.spec))
                return llguidance.LLMatcher.grammar_from_lark(f"start: {options}")

    def error(self) -> str | None:
        """Why this ask cannot be compiled (an unsupported schema, a bad regex); None if it can.
        Needs no tokenizer, so the gateway can ask before any engine sees the request."""
        try:
            message = llguidance.LLMatcher.validate_grammar(self.grammar)
        except ValueError as exc:
            return str(exc)
        return message or None


class GrammarMatcher:
    """One request's position in its grammar."""

    __slots__ = ("_matcher", "vocab_size")

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self.vocab_size = vocab_size

    @property
    def is_finished(self) -> bool:
        """The grammar is complete and allows nothing more (not even end-of-sequence), or it
        failed (a token it did not allow, a resource limit): either way the request ends."""
        return self._matcher.is_stopped() or self._matcher.is_error()

    def bitmask(self) -> torch.Tensor:
        """The tokens allowed next, as [ceil(vocab / 32)] int32 words."""
        return torch.frombuffer(bytearray(self._matcher.compute_bitmask()), dtype=torch.int32)

    def accept(self, token_id: int) -> bool:
        """Advance past a sampled token; False if the grammar did not allow it."""
        return self._matcher.consume_token(token_id)

    @staticmethod
    def allowed(matchers: Sequence[GrammarMatcher]) -> torch.Tensor:
        """[len(matchers), vocab] bool: what each may sample next."""
        words = torch.stack([m.bitmask() for m in matchers])
        return unpack_bitmask(words, matchers[0].vocab_size)


class GrammarCompiler:
    """Compiles `StructuredOutput`s for one tokenizer (the `tokenizers` object the engine's
    `Tokenizer` wraps); its token trie is built on first use."""

    __slots__ = ("_llg_tokenizer", "backend", "eos_token_ids", "vocab_size")

    def __init__(self, backend: tokenizers.Tokenizer, eos_token_ids: frozenset[int],
                 vocab_size: int) -> None:
        self.backend = backend
        self.eos_token_ids = eos_token_ids
        self.vocab_size = vocab_size  # the model's (logits' width), may exceed the tokenizer's
        self._llg_tokenizer: llguidance.LLTokenizer | None = None

    def matcher(self, structured: StructuredOutput) -> GrammarMatcher:
        """A fresh matcher; RequestError naming the asking field if the grammar is invalid."""
        if self._llg_tokenizer is None:
            self._llg_tokenizer = llguidance.LLTokenizer(
                self.backend.to_str(), n_vocab=self.vocab_size,
                eos_token=sorted(self.eos_token_ids) or None)
        try:
            grammar = structured.grammar
        except ValueError as exc:
            raise RequestError(f"'{structured.param}': {exc}", param=structured.param) from None
        matcher = llguidance.LLMatcher(self._llg_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise RequestError(f"'{structured.param}' cannot be compiled: {matcher.get_error()}",
                               param=structured.param)
        return GrammarMatcher(matcher, self.vocab_size)
