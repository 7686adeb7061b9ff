"""Sampling parameters and the batched sampler.

Each request draws from its own `torch.Generator`, seeded by the user or from the engine's
injected RNG, so a seeded request samples the same tokens whatever else shares its batch (every
processor below works row by row). Random choice uses the exponential-race form of the Gumbel
trick: argmax(p / E), E ~ Exp(1).

Order (vLLM's): the allowed-token mask (structured output and allowed_token_ids; vLLM applies
the grammar bitmask before its sampler, so truncation and greedy choose among allowed tokens),
logit_bias, min_tokens (EOS and stop token ids masked), the repetition penalty, the frequency
and presence penalties; then greedy takes the argmax, and random rows go through temperature,
top-k, top-p and min-p before the draw. Rows that need none of it take the plain argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from shunter.engine.logits import (
    apply_additive,
    apply_allowed,
    apply_frequency_presence,
    apply_min_p,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
)
from shunter.engine.params import SamplingParams
from shunter.engine.structured import GrammarMatcher

__all__ = ["Sampler", "SamplingParams", "SamplingState"]


@dataclass(slots=True)
class SamplingState:
    """A request's sampling parameters, its private random stream and what it has sampled."""

    params: SamplingParams
    generator: torch.Generator | None  # None for greedy requests
    grammar: GrammarMatcher | None = None
    stop_token_ids: tuple[int, ...] = ()  # masked until min_tokens outputs exist
    prompt_token_ids: tuple[int, ...] = ()  # kept only for the repetition penalty
    num_output_tokens: int = 0
    # output token counts [vocab] (penalties) and prompt tokens seen [vocab] (repetition),
    # built on the first step that needs them
    counts: torch.Tensor | None = field(default=None, repr=False)
    prompt_seen: torch.Tensor | None = field(default=None, repr=False)

    @property
    def needs_processing(self) -> bool:
        p = self.params
        return (not p.is_greedy or p.has_penalties or bool(p.logit_bias) or p.min_tokens > 0
                or p.allowed_token_ids is not None or self.grammar is not None)

    @property
    def is_grammar_finished(self) -> bool:
        return self.grammar is not None and self.grammar.is_finished

    def output_counts(self, vocab_size: int) -> torch.Tensor:
        if self.counts is None:
            self.counts = torch.zeros(vocab_size, dtype=torch.int32)
        return self.counts

    def seen(self, vocab_size: int) -> torch.Tensor:
        """Tokens in the prompt or the output so far ([vocab] bool)."""
        if self.prompt_seen is None:
            self.prompt_seen = torch.zeros(vocab_size, dtype=torch.bool)
            self.prompt_seen[list(self.prompt_token_ids)] = True
        return self.prompt_seen | (self.output_counts(vocab_size) > 0)

    def accept(self, token_id: int) -> None:
        """Record a sampled token: counts, min_tokens progress, the grammar's position."""
        self.num_output_tokens += 1
        if self.counts is not None:
            self.counts[token_id] += 1
        if self.grammar is not None:
            self.grammar.accept(token_id)


class Sampler:
    """Picks one token per logits row; rows and states are given in the same order.

    `sample` never changes `logits` (log-probs are read from the raw rows) and records each
    drawn token in its state."""

    def sample(self, logits: torch.Tensor, states: Sequence[SamplingState]) -> list[int]:
        assert logits.shape[0] == len(states), "one sampling state per logits row"
        if not states:
            return []
        # max's indices are argmax's (the first of ties) at a third of the time on CPU
        tokens = logits.max(dim=-1).indices.tolist()
        need = [i for i, s in enumerate(states) if s.needs_processing]
        if need:
            # Per-request generators live on the CPU, so processed rows are drawn there.
            rows = logits[need].float().cpu()  # a copy
            subset = [states[i] for i in need]
            processed = self.process(rows, subset)
            for row, i in enumerate(need):
                if states[i].params.is_greedy:
                    tokens[i] = int(processed[row].argmax())
            random_rows = [row for row, s in enumerate(subset) if not s.params.is_greedy]
            if random_rows:
                drawn = self._draw(processed[random_rows], [subset[r] for r in random_rows])
                for r, token_id in zip(random_rows, drawn, strict=True):
                    tokens[need[r]] = token_id
        for state, token_id in zip(states, tokens, strict=True):
            state.accept(token_id)
        return tokens

    @staticmethod
    def process(rows: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
        """The logits processors before temperature, on float32 CPU rows (changed in place
        where possible). None of them leaves a row without a token: a mask that allows nothing
        (a grammar in error, which ends the request) is not applied, and min_tokens gives way
        to a mask that allows only EOS."""
        vocab = rows.shape[1]
        masked = [i for i, s in enumerate(states)
                  if s.grammar is not None or s.params.allowed_token_ids is not None]
        if masked:
            allowed = torch.ones(len(masked), vocab, dtype=torch.bool)
            grammar_rows = [j for j, i in enumerate(masked) if states[i].grammar is not None]
            if grammar_rows:
                allowed[grammar_rows] = GrammarMatcher.allowed(
                    [states[masked[j]].grammar for j in grammar_rows])  # type: ignore[misc]
            for j, i in enumerate(masked):
                ids = states[i].params.allowed_token_ids
                if ids is not None:
                    only = torch.zeros(vocab, dtype=torch.bool)
                    only[list(ids)] = True
                    allowed[j] &= only
            allowed[~allowed.any(dim=-1)] = True
            rows[masked] = apply_allowed(rows[masked], allowed)
        rows = Sampler._additive(rows, states)
        rep = [i for i, s in enumerate(states) if s.params.repetition_penalty != 1.0]
        if rep:
            seen = torch.stack([states[i].seen(vocab) for i in rep])
            penalties = torch.tensor([states[i].params.repetition_penalty for i in rep])
            rows[rep] = apply_repetition_penalty(rows[rep], seen, penalties)
        freq = [i for i, s in enumerate(states)
                if s.params.frequency_penalty != 0.0 or s.params.presence_penalty != 0.0]
        if freq:
            counts = torch.stack([states[i].output_counts(vocab) for i in freq])
            rows[freq] = apply_frequency_presence(
                rows[freq], counts,
                torch.tensor([states[i].params.frequency_penalty for i in freq]),
                torch.tensor([states[i].params.presence_penalty for i in freq]))
        return rows

    @staticmethod
    def _additive(rows: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
        """logit_bias, then min_tokens' -inf on EOS and stop token ids."""
        row_ids: list[int] = []
        token_ids: list[int] = []
        values: list[float] = []
        for i, s in enumerate(states):
            for token_id, bias in s.params.logit_bias:
                row_ids.append(i)
                token_ids.append(token_id)
                values.append(bias)
        if row_ids:
            rows = apply_additive(rows, torch.tensor(row_ids), torch.tensor(token_ids),
                                  torch.tensor(values, dtype=rows.dtype))
        row_ids, token_ids = [], []
        for i, s in enumerate(states):
            if s.num_output_tokens < s.params.min_tokens:
                row_ids += [i] * len(s.stop_token_ids)
                token_ids += s.stop_token_ids
        if row_ids:
            rows_masked = sorted(set(row_ids))
            before = rows[rows_masked].clone()
            rows = apply_additive(rows, torch.tensor(row_ids), torch.tensor(token_ids),
                                  torch.full((len(row_ids),), float("-inf"), dtype=rows.dtype))
            # a grammar (or allowed_token_ids) that allows nothing but EOS wins over min_tokens
            empty = torch.isneginf(rows[rows_masked]).all(dim=-1)
            if bool(empty.any()):
                restore = [r for r, e in zip(rows_masked, empty.tolist(), strict=True) if e]
                rows[restore] = before[empty]
        return rows

    def _draw(self, logits: torch.Tensor, states: Sequence[SamplingState]) -> list[int]:
        """One token per row by the exponential race, each row on its own generator. When
        every row cuts to its top k, only the top max(k) candidates are worked on (no sort of
        the vocabulary); each row still draws noise for the whole vocabulary, so its random
        stream, and so its tokens, do not depend on what else is in the batch."""
        params = [s.params for s in states]
        vocab = logits.shape[1]
        cuts = [p.top_k_cut for p in params]
        candidates = None
        if all(k is not None for k in cuts) and max(cuts) < vocab:  # type: ignore[type-var]
            logits, candidates = logits.topk(max(cuts), dim=-1)  # type: ignore[type-var]
        probs = self._probabilities(logits, params)
        tokens = []
        for row, state in enumerate(states):
            noise = torch.empty(vocab).exponential_(generator=state.generator)
            if candidates is None:
                tokens.append(int((probs[row] / noise).argmax()))
            else:
                pick = int((probs[row] / noise[candidates[row]]).argmax())
                tokens.append(int(candidates[row, pick]))
        return tokens

    @staticmethod
    def _probabilities(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
        """Temperature, top-k, top-p, min-p: unnormalized probabilities to draw from."""
        logits = apply_temperature(logits, torch.tensor([p.temperature for p in params]))
        width = logits.shape[1]  # the vocabulary, or the top candidates
        if any(p.top_k_cut is not None and p.top_k_cut < width for p in params):
            logits = apply_top_k(logits, torch.tensor([min(p.top_k_cut or width, width)
                                                       for p in params]))
        probs = logits.softmax(dim=-1)
        if any(p.top_p < 1.0 for p in params):
            probs = apply_top_p(probs, torch.tensor([p.top_p for p in params]))
        if any(p.min_p > 0.0 for p in params):
            probs = apply_min_p(probs, torch.tensor([p.min_p for p in params]))
        return probs
