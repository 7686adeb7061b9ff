"""Token bytes and text for log-probs, and whether a chat template renders tools."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("torch")


def test_token_bytes_rebuild_the_text_and_partial_characters_show_as_bytes(tok_loaded) -> None:
    tok = tok_loaded.tokenizer
    text = "the cat sat, héllo 世界"
    ids = tok.encode(text)
    assert b"".join(tok.token_bytes(t) for t in ids) == text.encode()
    pieces = [tok.token_text(t) for t in ids]
    assert any(p.startswith("bytes:\\x") for p in pieces)  # 世 spans several byte tokens
    assert "".join(p for p in pieces if not p.startswith("bytes:")).startswith("the cat")
    [im_end] = tok.encode("<|im_end|>")
    assert tok.token_bytes(im_end) == b"<|im_end|>"


def test_tool_support_is_read_from_the_template(tok_loaded) -> None:
    tok = tok_loaded.tokenizer
    assert not tok.supports_tools
    with_tools = dataclasses.replace(
        tok, _template=None,
        chat_template="{% for t in tools or [] %}{{ t.name }}{% endfor %}{{ messages[0].content }}")
    assert with_tools.supports_tools
    assert with_tools.apply_chat_template([{"role": "user", "content": "q"}],
                                          tools=[{"name": "f"}]) == "fq"
