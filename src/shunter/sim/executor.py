"""The simulator's executor: a cost model predicts each step's time; the trace decides when a
request stops. Only this class knows true output lengths; the scheduler learns of an end
through `StepResult.stopped`, exactly as it would from a real model's EOS.

Probes (for an `EarlyStoppingPolicy`, after `enable_probes(probe_tokens)`): a request
registered with a `ProbeTrace` reports the certainty its trace holds whenever its output reaches
a multiple of `probe_tokens` (`StepResult.probes`), as an engine would measure it. Bulk decode
runs never cover such a step (`steps_until_probe` bounds them), so the scheduler sees every
probe in a real step.

Speculative decoding (after `enable_speculation(acceptance_rate, seed)`): each draft token a
decode verifies is accepted with probability `acceptance_rate`, independently (the i.i.d.
model of Leviathan et al. 2023 that vLLM's acceptance-rate metric measures); the request emits
its leading accepted drafts plus one token, never more than its true output has left. Draws
come from one stream per request, seeded by (seed, request id), so a run repeats exactly; a
request moved to another replica starts a fresh stream there. Bulk decode runs assume one
token per step: the simulator turns them off under speculation (`shunter.sim.runner`).

Expert profiles (`register(..., expert_profile=...)`, Read-ME's scheduling on MoE models): a
step with registered requests costs `StepShape.expert_mix`, their (tokens, profile) in
request-id order, so the same requests cost the same whatever order the step lists them in;
a decode run over them costs the line `step_time_s` (context 0, their mix) + slope * context,
which a step of that shape is bit for bit (`shunter.sim.cost.moe`), so runs stay exact.

LoRA adapters (`lora`, an `AdapterCache` the runner sets): each step adds its adapter loads and
LoRA kernels (`shunter.sim.cost.lora`), last; a decode run adds the same per step, and is only
taken when its steps' adapters are the last real step's (nothing to load or reorder)."""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from shunter.core.sched.interface import SchedulerOutput, StepResult
from shunter.core.types import ExpertProfile, ProbeTrace, RequestId, StepShape
from shunter.errors import ConfigError
from shunter.sim.cost.interface import CostModel
from shunter.sim.cost.lora import AdapterCache, no_adapters_message

__all__ = ["SIM_TOKEN_ID", "SimExecutor", "num_block_runs"]

# decode runs longer than this get their end times from numpy (shorter ones: a Python loop,
# which beats numpy's per-call overhead; both add in step order, so they agree bit for bit)
NUMPY_MIN_STEPS = 48
SIM_TOKEN_ID = 0  # the simulator has no vocabulary: every sampled token is this id


def num_block_runs(pairs: Sequence[tuple[int, int]]) -> int:
    """How many copies a list of (source, destination) block copies takes: runs where both
    ids go up by one can be copied at once."""
    runs = 0
    prev_src = prev_dst = -2
    for src, dst in sorted(pairs):
        if src != prev_src + 1 or dst != prev_dst + 1:
            runs += 1
        prev_src, prev_dst = src, dst
    return runs


class SimExecutor:
    __slots__ = ("_draws", "_lines", "_probed", "_profiles", "_remaining", "acceptance_rate",
                 "cost_model", "lora", "probe_tokens", "spec_seed")

    def __init__(self, cost_model: CostModel) -> None:
        self.cost_model = cost_model
        self._remaining: dict[RequestId, int] = {}  # true output tokens not yet sampled
        self._lines: dict[int, tuple[float, float]] = {}  # decode step time line per batch size
        self.probe_tokens: int | None = None  # probing off
        # probed requests: (output tokens sampled so far, their trace)
        self._probed: dict[RequestId, tuple[int, ProbeTrace]] = {}
        self.acceptance_rate: float | None = None  # speculative decoding off
        self.spec_seed = 0
        self._draws: dict[RequestId, random.Random] = {}  # per request acceptance draws
        self._profiles: dict[RequestId, ExpertProfile] = {}  # requests with an expert profile
        self.lora: AdapterCache | None = None  # LoRA adapters off (`shunter.sim.cost.lora`)

    def enable_probes(self, probe_tokens: int) -> None:
        """Report probe values every `probe_tokens` output tokens of traced requests."""
        assert probe_tokens >= 1 and not self._remaining, "enable probes before any request"
        self.probe_tokens = probe_tokens

    def enable_speculation(self, acceptance_rate: float, seed: int) -> None:
        """Accept each verified draft token with probability `acceptance_rate`."""
        assert 0.0 <= acceptance_rate < 1.0 and not self._remaining, "enable before any request"
        assert self.probe_tokens is None, "speculation and probes are not modelled together"
        self.acceptance_rate = acceptance_rate
        self.spec_seed = seed

    def register(self, request_id: RequestId, num_output_tokens: int,
                 probe_trace: ProbeTrace | None = None, num_sampled: int = 0,
                 expert_profile: ExpertProfile | None = None, lora_id: str | None = None) -> None:
        """Tell the executor a request's true output length (the trace's, `num_sampled` tokens
        of it already sampled elsewhere), if probing, its certainty trace, and its experts."""
        if lora_id is not None:
            if self.lora is None:
                raise ConfigError(no_adapters_message(None, lora_id))
            self.lora.register(request_id, lora_id)
        self._remaining[request_id] = num_output_tokens
        if expert_profile is not None:
            self._profiles[request_id] = expert_profile
        if self.acceptance_rate is not None:  # (str seeds hash with SHA-512: stable across runs)
            self._draws[request_id] = random.Random(f"{self.spec_seed}:{request_id}")
        if probe_trace is not None and self.probe_tokens is not None:
            self._probed[request_id] = (num_sampled, probe_trace)

    def probe_trace(self, request_id: RequestId) -> ProbeTrace | None:
        """The certainty trace of a probed request (what a migrated request takes along)."""
        entry = self._probed.get(request_id)
        return None if entry is None else entry[1]

    def forget(self, request_id: RequestId) -> None:
        self._remaining.pop(request_id, None)
        self._probed.pop(request_id, None)
        self._draws.pop(request_id, None)
        self._profiles.pop(request_id, None)
        if self.lora is not None:
            self.lora.forget(request_id)

    def steps_until_probe(self, request_ids: Sequence[RequestId]) -> int:
        """Steps until the first of these requests samples a token that reaches a probe point
        (the step reporting it); sys.maxsize if none of them is probed."""
        probed, interval = self._probed, self.probe_tokens
        steps = sys.maxsize
        if not probed or interval is None:
            return steps
        for rid in request_ids:
            entry = probed.get(rid)
            if entry is not None:
                steps = min(steps, interval - entry[0] % interval)
        return steps

    def steps_until_stop(self, request_ids: Sequence[RequestId]) -> int:
        """Steps until the first of these requests reaches its true output length."""
        remaining = self._remaining
        steps = remaining[request_ids[0]]
        for rid in request_ids:  # (a typed loop: mypyc compiles the lookups natively)
            left = remaining[rid]
            if left < steps:
                steps = left
        return steps

    def advance(self, request_ids: Sequence[RequestId], num_steps: int) -> frozenset[RequestId]:
        """Sample `num_steps` tokens for each request at once; returns those that stop at the last."""
        remaining = self._remaining
        stopped = []
        for rid in request_ids:
            left = remaining[rid] - num_steps
            assert left >= 0, f"{rid} decoded past its true length"
            remaining[rid] = left
            if left == 0:
                stopped.append(rid)
        probed = self._probed
        if probed:  # (runs stop short of probe points: counts only)
            for rid in request_ids:
                entry = probed.get(rid)
                if entry is not None:
                    probed[rid] = (entry[0] + num_steps, entry[1])
        return frozenset(stopped)

    def decode_run_end_times(self, start_s: float, num_decodes: int, context_tokens: int,
                             num_steps: int, request_ids: Sequence[RequestId] = ()
                             ) -> list[float]:
        """End times of `num_steps` decode-only steps after `start_s`, the i-th (1-based) reading
        `context_tokens + i * num_decodes` KV tokens; sums taken in step order, as step by step.
        `request_ids`: the run's requests (their expert profiles change the steps' cost)."""
        line = self._lines.get(num_decodes) if not self._profiles else self._routed_line(
            num_decodes, request_ids)
        if line is None:
            line = self._lines[num_decodes] = self.cost_model.decode_step_line_s(num_decodes)
        fixed_s, slope_s = line
        lora_s = 0.0  # each step's LoRA kernels: added last, as `_step_time_s` adds them
        if self.lora is not None:
            run_s = self.lora.run_s(request_ids)
            assert run_s is not None, "a decode run whose adapters change the GPU slots"
            lora_s = run_s
        if num_steps > NUMPY_MIN_STEPS:
            contexts = context_tokens + num_decodes * np.arange(1, num_steps + 1, dtype=np.int64)
            durations = fixed_s + slope_s * contexts
            if lora_s:
                durations = durations + lora_s
            # cumsum adds in order, as the loop below and step-by-step timing do
            return np.cumsum(np.concatenate(([start_s], durations)))[1:].tolist()
        ends = []
        end_s = start_s
        for _ in range(num_steps):
            context_tokens += num_decodes
            end_s += fixed_s + slope_s * context_tokens + lora_s
            ends.append(end_s)
        return ends

    def execute(self, output: SchedulerOutput) -> StepResult:
        remaining = self._remaining
        for request_id in output.finished_ids:
            remaining.pop(request_id, None)
            self._profiles.pop(request_id, None)
        if self._probed:
            return self._execute_probing(output)
        if self.acceptance_rate is not None:
            return self._execute_speculative(output)
        sampled: dict[RequestId, int] = {}
        stopped: list[RequestId] = []
        for chunk in output.chunks:
            if chunk.is_sampling:
                rid = chunk.request_id
                sampled[rid] = SIM_TOKEN_ID
                left = remaining[rid] - 1
                remaining[rid] = left
                if left <= 0:
                    stopped.append(rid)
        return StepResult(self._step_time_s(output), sampled, frozenset(stopped))

    def _expert_mix(self, scheduled: Sequence[tuple[RequestId, int]]
                    ) -> tuple[tuple[int, ExpertProfile], ...]:
        """(tokens, profile) of the requests with a profile, in request-id order."""
        profiles = self._profiles
        return tuple((n, profiles[rid]) for rid, n in sorted(scheduled) if rid in profiles)

    def _routed_line(self, num_decodes: int, request_ids: Sequence[RequestId]
                     ) -> tuple[float, float] | None:
        """The decode line of these requests' expert mix; None (the cached line) without one."""
        mix = self._expert_mix([(rid, 1) for rid in request_ids])
        if not mix:
            return self._lines.get(num_decodes)
        shape = StepShape(num_decode_requests=num_decodes, expert_mix=mix)
        return (self.cost_model.step_time_s(shape),
                self.cost_model.decode_step_line_s(num_decodes)[1])

    def _step_time_s(self, output: SchedulerOutput) -> float:
        shape = output.shape
        if self._profiles:
            mix = self._expert_mix([(c.request_id, c.num_scheduled_tokens) for c in output.chunks])
            if mix:
                shape = replace(shape, expert_mix=mix)
        duration_s = self.cost_model.step_time_s(shape)  # (host-tier stores: asynchronous)
        num_swapped = len(output.swap_out) + len(output.swap_in)
        if num_swapped:
            num_runs = num_block_runs(output.swap_out) + num_block_runs(output.swap_in)
            duration_s += self.cost_model.swap_time_s(num_swapped, num_runs)
        if self.lora is not None:
            duration_s += self.lora.step_s(output)
        return duration_s

    def _execute_probing(self, output: SchedulerOutput) -> StepResult:
        """`execute` while traced requests live: the same, plus their probe values."""
        remaining, probed = self._remaining, self._probed
        for request_id in output.finished_ids:
            probed.pop(request_id, None)
        interval = self.probe_tokens
        assert interval is not None
        sampled: dict[RequestId, int] = {}
        stopped: list[RequestId] = []
        probes: dict[RequestId, float] = {}
        for chunk in output.chunks:
            if chunk.is_sampling:
                rid = chunk.request_id
                sampled[rid] = SIM_TOKEN_ID
                left = remaining[rid] - 1
                remaining[rid] = left
                if left <= 0:
                    stopped.append(rid)
                entry = probed.get(rid)
                if entry is not None:
                    num_sampled = entry[0] + 1
                    probed[rid] = (num_sampled, entry[1])
                    if num_sampled % interval == 0:
                        probes[rid] = entry[1].value_at(num_sampled)
        return StepResult(self._step_time_s(output), sampled, frozenset(stopped), probes)

    def _execute_speculative(self, output: SchedulerOutput) -> StepResult:
        """`execute` under speculation: each decode with drafts emits its leading accepted
        drafts and one more token, up to what its true output has left."""
        remaining, draws, drafts = self._remaining, self._draws, output.num_draft_tokens
        for request_id in output.finished_ids:
            draws.pop(request_id, None)
        rate = self.acceptance_rate
        assert rate is not None, "drafts scheduled without enable_speculation"
        sampled: dict[RequestId, int] = {}
        stopped: list[RequestId] = []
        accepted: dict[RequestId, tuple[int, ...]] = {}
        for chunk in output.chunks:
            if not chunk.is_sampling:
                continue
            rid = chunk.request_id
            num_drafts = drafts.get(rid, 0)
            num_accepted = 0
            if num_drafts:
                draw = draws[rid].random
                while num_accepted < num_drafts and draw() < rate:
                    num_accepted += 1
            num_emitted = min(num_accepted + 1, remaining[rid])
            sampled[rid] = SIM_TOKEN_ID
            if num_emitted > 1:
                accepted[rid] = (SIM_TOKEN_ID,) * (num_emitted - 1)
            left = remaining[rid] - num_emitted
            remaining[rid] = left
            if left <= 0:
                stopped.append(rid)
        return StepResult(self._step_time_s(output), sampled, frozenset(stopped),
                          accepted=accepted)
