"""Tokenizer, chat template and streaming detokenizer, built from the model's own files.

A Hugging Face directory carries tokenizer.json; a GGUF file carries `tokenizer.ggml.*` (BPE
vocabulary, merges, token types, pre-tokenizer name) from which an equivalent
`tokenizers.Tokenizer` is built. Chat templates are Jinja, rendered in a sandbox.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from shunter.engine.loader.hf import read_json
from shunter.errors import ModelError, RequestError

__all__ = ["IncrementalDetokenizer", "Tokenizer"]

_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_byte_level() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level()])


def _llama3() -> pre_tokenizers.PreTokenizer:
    split = pre_tokenizers.Split(tokenizers.Regex(_LLAMA3_SPLIT), behavior="isolated")
    return pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# llama.cpp pre-tokenizer names (tokenizer.ggml.pre) -> the equivalent HF pre-tokenizer.
GGUF_PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    "default": _byte_level,
    "gpt-2": _byte_level,
    "smollm": _digits_then_byte_level,
    "starcoder": _digits_then_byte_level,
    "refact": _digits_then_byte_level,
    "llama-bpe": _llama3,
    "llama3": _llama3,
}


@dataclass(slots=True, kw_only=True)
class Tokenizer:
    """Text <-> token ids, special tokens and the chat template of one model."""

    backend: tokenizers.Tokenizer
    eos_token_ids: frozenset[int]
    bos_token_id: int | None = None
    add_bos_token: bool = False
    chat_template: str | None = None
    _template: jinja2.Template | None = field(default=None, repr=False)
    _token_bytes: list[bytes] | None = field(default=None, repr=False)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text (e.g. `<|im_start|>`) maps to its id."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if self.add_bos_token and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (a piece of a UTF-8 character, possibly); a special
        token's are its text's."""
        if self._token_bytes is None:
            self._token_bytes = _vocabulary_bytes(self.backend)
        table = self._token_bytes
        return table[token_id] if 0 <= token_id < len(table) else b""

    def token_text(self, token_id: int) -> str:
        """A token as text; one that is not whole UTF-8 is "bytes:" and its escaped bytes."""
        raw = self.token_bytes(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    @property
    def supports_tools(self) -> bool:
        """Whether the chat template renders a `tools` list (the model was taught tool calls)."""
        if self.chat_template is None:
            return False
        env = jinja2.sandbox.ImmutableSandboxedEnvironment()
        return "tools" in jinja2.meta.find_undeclared_variables(env.parse(self.chat_template))

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                            add_generation_prompt: bool = True,
                            tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """Render chat messages (and the tools offered, if any) into the prompt text the model
        was trained on."""
        if self.chat_template is None:
            raise RequestError("this model has no chat template; send a plain prompt instead",
                               param="messages")
        if self._template is None:
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_template_error
            self._template = env.from_string(self.chat_template)
        bos = self.backend.id_to_token(self.bos_token_id) if self.bos_token_id is not None else ""
        eos = self.backend.id_to_token(min(self.eos_token_ids)) if self.eos_token_ids else ""
        extra = {} if tools is None else {"tools": list(tools)}
        return self._template.render(messages=list(messages), bos_token=bos or "",
                                     eos_token=eos or "",
                                     add_generation_prompt=add_generation_prompt, **extra)

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any]) -> Tokenizer:
        """Build the BPE tokenizer a GGUF file describes (gpt2-style byte-level BPE)."""
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelError(f"GGUF tokenizer model {kind!r} is not supported (only 'gpt2' BPE)")
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in GGUF_PRE_TOKENIZERS:
            raise ModelError(f"GGUF pre-tokenizer {pre!r} is not supported; supported: "
                             f"{', '.join(GGUF_PRE_TOKENIZERS)}")
        tokens: list[str] = meta["tokenizer.ggml.tokens"]
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        backend = tokenizers.Tokenizer(models.BPE(
            vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=False))
        backend.pre_tokenizer = GGUF_PRE_TOKENIZERS[pre]()
        backend.decoder = decoders.ByteLevel()
        types = meta.get("tokenizer.ggml.token_type", [])
        backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                    for i, t in enumerate(types) if t == _GGUF_CONTROL])
        backend.add_tokens([AddedToken(tokens[i], normalized=False)
                            for i, t in enumerate(types) if t == _GGUF_USER_DEFINED])
        eos = {int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
               if k in meta}
        bos = meta.get("tokenizer.ggml.bos_token_id")
        return cls(backend=backend, eos_token_ids=frozenset(eos),
                   bos_token_id=None if bos is None else int(bos),
                   add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                   chat_template=meta.get("tokenizer.chat_template"))

    @classmethod
    def from_hf_dir(cls, directory: Path) -> Tokenizer:
        """Load tokenizer.json plus the special tokens and template from the config files."""
        path = directory / "tokenizer.json"
        if not path.exists():
            raise ModelError(f"model file missing: {path}")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception for corrupt files
            raise ModelError(f"cannot read {path}: {exc}") from exc
        tok_config = _optional_json(directory / "tokenizer_config.json")
        eos: set[int] = set()
        for source in (_optional_json(directory / "config.json"),
                       _optional_json(directory / "generation_config.json")):
            value = source.get("eos_token_id")
            eos.update(value if isinstance(value, list) else [] if value is None else [value])
        eos_id = backend.token_to_id(_token_text(tok_config.get("eos_token")) or "")
        if eos_id is not None:
            eos.add(eos_id)
        bos_id = backend.token_to_id(_token_text(tok_config.get("bos_token")) or "")
        return cls(backend=backend, eos_token_ids=frozenset(int(e) for e in eos),
                   bos_token_id=bos_id, add_bos_token=bool(tok_config.get("add_bos_token", False)),
                   chat_template=_hf_chat_template(directory, tok_config))


def _byte_level_decoding() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the character standing for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


def _vocabulary_bytes(backend: tokenizers.Tokenizer) -> list[bytes]:
    """Every token's bytes: byte-level BPE pieces decoded through GPT-2's alphabet,
    SentencePiece pieces with "▁" as a space and <0xNN> byte fallbacks, added tokens as text."""
    size = backend.get_vocab_size(with_added_tokens=True)
    added = {i: t.content for i, t in backend.get_added_tokens_decoder().items()}
    is_byte_level = isinstance(backend.decoder, decoders.ByteLevel)
    byte_of = _byte_level_decoding()
    table = []
    for token_id in range(size):
        piece = backend.id_to_token(token_id) or ""
        if token_id in added:
            table.append(added[token_id].encode())
        elif is_byte_level and all(c in byte_of for c in piece):
            table.append(bytes(byte_of[c] for c in piece))
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            table.append(bytes([int(piece[3:5], 16)]))
        else:
            table.append(piece.replace("\u2581", " ").encode())
    return table


def _raise_template_error(message: str) -> None:
    raise RequestError(f"chat template: {message}", param="messages")


def _optional_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.exists() else {}


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _hf_chat_template(directory: Path, tok_config: Mapping[str, Any]) -> str | None:
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.exists():
        return jinja_file.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: use "default"
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return template


@dataclass(slots=True)
class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that are always whole UTF-8.

    A byte-level BPE token can end inside a multi-byte character; decoding then yields U+FFFD,
    so the delta is held back until the character completes (vLLM's prefix/read offsets).
    Stop strings end the text before them; text that might begin a stop string is held back
    until it is known not to.
    """

    tokenizer: Tokenizer
    stop: tuple[str, ...] = ()
    skip_special_tokens: bool = True
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    num_emitted_chars: int = 0
    is_stopped: bool = False
    _prefix_offset: int = 0
    _read_offset: int = 0

    def append(self, token_id: int) -> bool:
        """Add one generated token; True if the text now contains a stop string."""
        self.token_ids.append(token_id)
        ids = self.token_ids
        decode = self.tokenizer.decode
        prefix = decode(ids[self._prefix_offset:self._read_offset], self.skip_special_tokens)
        full = decode(ids[self._prefix_offset:], self.skip_special_tokens)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return False
        delta = full[len(prefix):]
        self._prefix_offset, self._read_offset = self._read_offset, len(ids)
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text += delta
        for stop in self.stop:
            at = self.text.find(stop, start)
            if at >= 0:
                self.text = self.text[:at]
                self.is_stopped = True
        return self.is_stopped

    def take_delta(self, is_finished: bool) -> str:
        """Text not yet emitted; keeps back a possible stop-string prefix unless finished."""
        end = len(self.text)
        if not is_finished and self.stop:
            end = max(self.num_emitted_chars, end - (max(len(s) for s in self.stop) - 1))
        delta = self.text[self.num_emitted_chars:end]
        self.num_emitted_chars = end
        return delta
