"""EngineExecutor: the core scheduler's Executor, running each step on the real model.

The scheduler owns blocks and decides what to compute; the executor owns what a model needs
beyond that: each request's token ids (learned from `new_requests`, extended by what it
samples), the KV tensors and swap copies (through the model runner), sampling parameters and
state (penalty counts, a structured-output grammar), the log-probs a request asked for, and
the stop conditions that need token or text knowledge (EOS, stop token ids, stop strings, a
finished grammar). Length limits stay with the scheduler. Nothing here feeds back into what
the scheduler decides, except probes for a policy that asks for them.

Probes (`enable_probes`, for an `EarlyStoppingPolicy` such as `dynasor`): every
`probe_tokens` sampled tokens of a request, its certainty over that window is reported
(`StepResult.probes`): the mean over the window's steps of 1 - H / ln V, H the entropy of the
model's raw next-token distribution (`logits.certainty`). A token-level measure, measured on
the tokens the request decodes anyway; the paper's Certaindex agrees the branches' probed
answers (Probe-In-The-Middle), which needs an extra short decode per probe this engine does
not make, and it found answer agreement the better predictor (Fig. 10: Pearson 0.68 against
0.40 for the mean log-prob, a token-level signal like this one).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from shunter.core.sched.interface import SchedulerOutput, StepResult
from shunter.core.types import RequestId
from shunter.engine.logits import certainty, raw_logprobs
from shunter.engine.model_runner import ChunkInput, ModelRunner
from shunter.engine.outputs import TokenLogprobs
from shunter.engine.sampler import Sampler, SamplingParams, SamplingState
from shunter.engine.structured import GrammarMatcher

__all__ = ["EngineExecutor", "StopChecker"]

_GREEDY = SamplingParams(temperature=0.0)


class StopChecker(Protocol):
    """Sees every token a request samples; True once its text hit a stop string."""

    def append(self, token_id: int) -> bool:
        """Record one sampled token; return whether the request should stop."""
        ...


@dataclass(slots=True)
class _Registration:
    """What the front-end told us about a request; lives until the request finishes."""

    sampling: SamplingState
    stop_token_ids: frozenset[int]
    stop_checker: StopChecker | None
    logprobs: list[TokenLogprobs] = field(default_factory=list)  # sampled, not yet taken
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None
    has_prompt_logprobs: bool = False  # computed (a recompute preemption does not redo it)


class EngineExecutor:
    """Runs scheduler steps on a ModelRunner and samples the next tokens."""

    def __init__(self, runner: ModelRunner, *, eos_token_ids: frozenset[int] = frozenset(),
                 rng: random.Random | None = None,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self.runner = runner
        self.eos_token_ids = eos_token_ids
        self.sampler = Sampler()
        self._rng = rng or random.Random(0)
        self._timer = timer
        self._registrations: dict[RequestId, _Registration] = {}
        self._token_ids: dict[RequestId, list[int]] = {}  # dropped on recompute preemption
        self.probe_tokens: int | None = None  # probing off
        # probed requests: (tokens sampled, certainty summed over the current window); kept
        # through recompute preemptions, as the sampled tokens are
        self._probes: dict[RequestId, tuple[int, float]] = {}

    def enable_probes(self, probe_tokens: int) -> None:
        """Report each request's certainty every `probe_tokens` sampled tokens."""
        assert probe_tokens >= 1, "probe_tokens must be >= 1"
        self.probe_tokens = probe_tokens

    @property
    def num_live_requests(self) -> int:
        return len(self._token_ids)

    def register(self, request_id: RequestId, params: SamplingParams,
                 stop_checker: StopChecker | None = None, *,
                 grammar: GrammarMatcher | None = None,
                 prompt_token_ids: Sequence[int] = ()) -> None:
        """Attach sampling parameters and stop conditions before the request is scheduled
        (`prompt_token_ids` are needed for a repetition penalty)."""
        generator = None
        if not params.is_greedy:
            seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
            generator = torch.Generator().manual_seed(seed)
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self.eos_token_ids
        state = SamplingState(
            params, generator, grammar, stop_token_ids=tuple(sorted(stop_ids)),
            prompt_token_ids=tuple(prompt_token_ids) if params.repetition_penalty != 1.0 else ())
        self._registrations[request_id] = _Registration(state, frozenset(stop_ids), stop_checker)

    def take_logprobs(self, request_id: RequestId, num_tokens: int) -> tuple[TokenLogprobs, ...]:
        """The log-probs of the request's next `num_tokens` reported tokens (none if it did
        not ask for them)."""
        reg = self._registrations.get(request_id)
        if reg is None or not reg.logprobs:
            return ()
        taken, reg.logprobs[:num_tokens] = reg.logprobs[:num_tokens], []
        return tuple(taken)

    def take_prompt_logprobs(self, request_id: RequestId) -> tuple[TokenLogprobs, ...] | None:
        """The prompt's log-probs, once (None if not asked for, or already taken)."""
        reg = self._registrations.get(request_id)
        if reg is None:
            return None
        taken, reg.prompt_logprobs = reg.prompt_logprobs, None
        return taken

    def take_request(self, request_id: RequestId) -> tuple[object, ...]:
        """Remove and return what this executor holds for a request that moves to another
        engine (a prefill/decode handoff, `handoff.py`); `put_request` there restores it."""
        return (self._registrations.pop(request_id, None), self._token_ids.pop(request_id, None),
                self._probes.pop(request_id, None))

    def put_request(self, request_id: RequestId, state: tuple[object, ...]) -> None:
        """Adopt a moved request's state (`take_request` of another executor)."""
        registration, token_ids, probe = state
        if registration is not None:
            self._registrations[request_id] = registration  # type: ignore[assignment]
        if token_ids is not None:
            self._token_ids[request_id] = token_ids  # type: ignore[assignment]
        if probe is not None:
            self._probes[request_id] = probe  # type: ignore[assignment]

    def unregister(self, request_id: RequestId) -> None:
        """Forget a request the scheduler never took (rejected) or that ended."""
        self._registrations.pop(request_id, None)
        self._token_ids.pop(request_id, None)
        self._probes.pop(request_id, None)

    def execute(self, output: SchedulerOutput) -> StepResult:
        start = self._timer()
        for request_id in output.finished_ids:
            self.unregister(request_id)
        for request_id in output.preempted_ids:
            self._token_ids.pop(request_id, None)
        self.runner.swap_out(output.offload)  # host-tier stores: before anything reuses them
        self.runner.swap_out(output.swap_out)  # before swap-in: it may reuse freed blocks
        self.runner.swap_in(output.swap_in)
        for new in output.new_requests:
            assert new.prompt_token_ids is not None, f"{new.request_id}: engine needs token ids"
            self._token_ids[new.request_id] = list(new.prompt_token_ids)
            self._compute_prompt_logprobs(new.request_id,
                                          new.prompt_token_ids[:new.num_prompt_tokens])
        chunks = []
        for c in output.chunks:
            tokens = self._token_ids[c.request_id]
            start_pos = c.num_computed_tokens
            chunks.append(ChunkInput(c.request_id, tokens[start_pos:start_pos + c.num_scheduled_tokens],
                                     start_pos, c.block_ids, c.is_sampling))
        sampled, stopped, probes = self._sample(chunks)
        return StepResult(duration_s=self._timer() - start, sampled=sampled,
                          stopped=frozenset(stopped), probes=probes)

    def _sample(self, chunks: list[ChunkInput],
                ) -> tuple[dict[RequestId, int], list[RequestId], dict[RequestId, float]]:
        logits = self.runner.execute(chunks)
        sampling_ids = [c.request_id for c in chunks if c.is_sampling]
        regs = [self._registrations.get(rid) for rid in sampling_ids]
        states = [r.sampling if r is not None else SamplingState(_GREEDY, None) for r in regs]
        probes = self._probe(logits, sampling_ids)  # (the raw logits: before sampling edits them)
        tokens = self.sampler.sample(logits, states)
        self._record_logprobs(logits, regs, tokens)
        stopped = []
        for request_id, reg, token_id in zip(sampling_ids, regs, tokens, strict=True):
            self._token_ids[request_id].append(token_id)
            if reg is None:
                continue
            hit_stop_string = reg.stop_checker is not None and reg.stop_checker.append(token_id)
            if (token_id in reg.stop_token_ids or hit_stop_string
                    or reg.sampling.is_grammar_finished):
                stopped.append(request_id)
        return dict(zip(sampling_ids, tokens, strict=True)), stopped, probes

    def _probe(self, logits: torch.Tensor, sampling_ids: list[RequestId]) -> dict[RequestId, float]:
        """Add each sampling row's certainty to its request's window; the window means of the
        requests whose sampled count reaches a multiple of `probe_tokens` with this token."""
        interval = self.probe_tokens
        if interval is None or not sampling_ids:
            return {}
        probes: dict[RequestId, float] = {}
        for request_id, value in zip(sampling_ids, certainty(logits), strict=True):
            num_sampled, total = self._probes.get(request_id, (0, 0.0))
            num_sampled, total = num_sampled + 1, total + value
            if num_sampled % interval == 0:
                probes[request_id] = total / interval
                total = 0.0
            self._probes[request_id] = (num_sampled, total)
        return probes

    def _record_logprobs(self, logits: torch.Tensor, regs: list[_Registration | None],
                         tokens: list[int]) -> None:
        """Each sampled token's log-prob and its k most likely alternatives, from the raw
        logits (one batched log_softmax and top-k over the rows that asked)."""
        wanted = [(i, r, r.sampling.params.logprobs) for i, r in enumerate(regs)
                  if r is not None and r.sampling.params.logprobs is not None]
        if not wanted:
            return
        rows = [i for i, _, _ in wanted]
        chosen, top_ids, top_values = raw_logprobs(
            logits[rows], torch.tensor([tokens[i] for i in rows], device=logits.device),
            max(k for _, _, k in wanted))
        for j, (i, reg, k) in enumerate(wanted):
            top = tuple(zip(top_ids[j][:k], top_values[j][:k], strict=True))
            reg.logprobs.append(TokenLogprobs(tokens[i], chosen[j], top))

    def _compute_prompt_logprobs(self, request_id: RequestId, prompt: Sequence[int]) -> None:
        """Once per request that asked: an extra forward over its prompt (see ModelRunner)."""
        reg = self._registrations.get(request_id)
        if reg is None or reg.sampling.params.prompt_logprobs is None or reg.has_prompt_logprobs:
            return
        k = reg.sampling.params.prompt_logprobs
        entries = [TokenLogprobs(prompt[0], None)]  # nothing predicts the first token
        start = 0
        for logits in self.runner.prompt_logits(prompt):
            # row p predicts token p + 1; the very last row predicts the first output
            targets = prompt[start + 1:start + 1 + logits.shape[0]]
            start += logits.shape[0]
            if not targets:
                break
            logits = logits[:len(targets)]
            chosen, top_ids, top_values = raw_logprobs(
                logits, torch.tensor(targets, device=logits.device), k)
            entries += [TokenLogprobs(t, c, tuple(zip(ids, values, strict=True)))
                        for t, c, ids, values in zip(targets, chosen, top_ids, top_values,
                                                     strict=True)]
        reg.prompt_logprobs = tuple(entries)
        reg.has_prompt_logprobs = True
