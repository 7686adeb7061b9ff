"""Workload requests -> prompt text that a real server tokenizes to the trace's length.

Traces carry token counts (and Mooncake-style prefix block ids), not text. The prompt is built
from `PROMPT_WORDS`: common English words that are each one token, with their leading space,
in the byte-level BPE tokenizers of SmolLM2, GPT-2, Llama 3 and Qwen 2 (a pre-tokenizer splits
before each space, so word tokens never merge across words and N words are N tokens: Shunter's
engine and vLLM both reported exactly N prompt tokens for SmolLM2 in benchmarks/fidelity.py).
What a server really counted comes back in `usage.prompt_tokens` and is what the bench records.

Prefix sharing is kept: the words of block i of a request with `hash_ids` come from a stream
seeded by hash_ids[i], so two requests with equal leading ids start with equal text (and equal
tokens), as a prefix cache needs. Blocks past the ids are seeded by the request id. Text is a
pure function of the spec: the same trace gives the same prompts on every run.
"""

from __future__ import annotations

import random
import zlib

from shunter.core.types import RequestSpec

__all__ = ["PROMPT_WORDS", "prompt_text"]

PROMPT_WORDS: tuple[str, ...] = tuple(f" {w}" for w in (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no"))


def _block_words(seed: int, num_words: int) -> list[str]:
    rng = random.Random(seed)
    return rng.choices(PROMPT_WORDS, k=num_words)


def prompt_text(spec: RequestSpec) -> str:
    """`spec.num_prompt_tokens` one-token words; shared prefix blocks give shared text."""
    size = spec.hash_block_size
    num_tokens = spec.num_prompt_tokens
    words: list[str] = []
    for hash_id in spec.hash_ids or ():
        if len(words) >= num_tokens:
            break
        words += _block_words(hash_id, min(size, num_tokens - len(words)))
    if len(words) < num_tokens:  # the request's own tail, unique to it
        own_seed = zlib.crc32(spec.request_id.encode()) << 20 | len(words)
        words += _block_words(own_seed, num_tokens - len(words))
    return "".join(words)
