"""Logits processors: pure, batched functions over a [rows, vocab] float32 tensor.

The sampler applies them in vLLM's order (see `Sampler`): the allowed-token mask (structured
output, allowed_token_ids), logit_bias, min_tokens, the repetition penalty, the frequency and
presence penalties, then temperature, top-k, top-p and min-p. Each works on whole rows with
tensor operations (no Python loop over the vocabulary); per-row settings come in as
[rows] tensors, per-token settings as (row, token) index pairs.
"""

from __future__ import annotations

import math

import torch

__all__ = ["apply_additive", "apply_allowed", "apply_frequency_presence", "apply_min_p",
           "apply_repetition_penalty", "apply_temperature", "apply_top_k", "apply_top_p",
           "certainty", "raw_logprobs", "unpack_bitmask"]

_NEG_INF = float("-inf")


def apply_allowed(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """-inf wherever `allowed` ([rows, vocab] bool) is False."""
    return logits.masked_fill_(~allowed, _NEG_INF)


def apply_additive(logits: torch.Tensor, rows: torch.Tensor, token_ids: torch.Tensor,
                   values: torch.Tensor) -> torch.Tensor:
    """logits[rows[i], token_ids[i]] += values[i] (logit_bias; -inf values mask, as min_tokens)."""
    return logits.index_put_((rows, token_ids), values, accumulate=True)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor,
                             penalties: torch.Tensor) -> torch.Tensor:
    """HF/vLLM: a token already seen (prompt or output; `seen` [rows, vocab] bool) has a
    positive logit divided by the row's penalty and a negative one multiplied by it."""
    p = penalties.unsqueeze(1)
    penalized = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalized, logits)


def apply_frequency_presence(logits: torch.Tensor, counts: torch.Tensor,
                             frequency: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """OpenAI: logit -= frequency * count + presence * (count > 0), over output tokens only
    (`counts` [rows, vocab])."""
    counts = counts.to(logits.dtype)
    return logits - frequency.unsqueeze(1) * counts - presence.unsqueeze(1) * (counts > 0)


def apply_temperature(logits: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    return logits / temperatures.unsqueeze(1)


def apply_top_k(logits: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Keep each row's `ks[row]` largest logits (ties at the k-th value are all kept)."""
    kth = logits.topk(int(ks.max()), dim=-1).values.gather(1, (ks - 1).unsqueeze(1))
    return logits.masked_fill(logits < kth, _NEG_INF)


def apply_top_p(probs: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """Zero all but the smallest prefix (by probability) whose mass reaches top_p; at least
    one token always stays. `probs` need not be normalized row by row."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass = sorted_probs.sum(dim=-1, keepdim=True)
    drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_ps.unsqueeze(1) * mass
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(1, order, sorted_probs)


def apply_min_p(probs: torch.Tensor, min_ps: torch.Tensor) -> torch.Tensor:
    """Zero every token whose probability is below min_p times the row's largest."""
    threshold = probs.amax(dim=-1, keepdim=True) * min_ps.unsqueeze(1)
    return probs.masked_fill(probs < threshold, 0.0)


def unpack_bitmask(words: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, num_words] int32 bitmasks (bit j of word w = token 32 w + j) -> [rows, vocab] bool."""
    shifts = torch.arange(32, dtype=torch.int32)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(words.shape[0], -1)[:, :vocab_size].bool()


def raw_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, num_top: int,
                 ) -> tuple[list[float], list[list[int]], list[list[float]]]:
    """Log-probabilities from the model's raw distribution (log_softmax of unprocessed
    logits, float32): each row's chosen token's, and its `num_top` most likely tokens'."""
    logprobs = logits.float().log_softmax(dim=-1)
    chosen = logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1).tolist()
    if num_top == 0:
        return chosen, [[] for _ in chosen], [[] for _ in chosen]
    values, ids = logprobs.topk(num_top, dim=-1)
    return chosen, ids.tolist(), values.tolist()


def certainty(logits: torch.Tensor) -> list[float]:
    """Per row, 1 - H / ln V of the model's raw next-token distribution (entropy H over a
    vocabulary of V, float32): 1 when one token takes all the mass, 0 when it is uniform."""
    logprobs = logits.float().log_softmax(dim=-1)
    entropy = -(logprobs.exp() * logprobs).nan_to_num(0.0).sum(dim=-1)
    return (1.0 - entropy / math.log(logits.shape[-1])).clamp(0.0, 1.0).tolist()
