"""Reasoning programs (Dynasor's workload): self-consistency queries of parallel branches, each
program carrying the certainty trajectory it would show to a prober.

A program is one query answered by majority vote over `num_branches` sampled solutions
(self-consistency, best-of-n). Its branches are requests with the same `program_id`, the same
prompt (the same `hash_ids`, so a prefix cache computes it once) and the same arrival. Programs
arrive Poisson at `rate` programs/s (all at t = 0 with `rate=None`, a batch job).

The model behind the trajectory, per program (every draw seeded; the ranges are
`ReasoningShape` fields):

- lengths: the program's natural length L ~ lognormal(median `output_median_tokens`, sigma
  `output_sigma`); branch b generates l_b = L x lognormal(0, `branch_sigma`) tokens (capped at
  `max_output_tokens`) before it ends by itself. The prompt ~ lognormal(`prompt_median_tokens`,
  `prompt_sigma`).
- answers (Probe-In-The-Middle, the paper's Fig. 4): probed after t tokens, branch b shows its
  final answer once t >= s_b, its settling point, and an answer of its own (unsettled, agreeing
  with no other branch) before. s_b = phi_b x l_b, phi_b uniform in the program's class range;
  the final answer is the correct one (id 0) with the program's consensus probability q, else
  one of its class's `num_wrong_answers` plausible wrong ones (ids 1..).
- classes (`CONVERGENCE`): "early" programs settle in the first half of their branches with
  strong consensus (certainty crosses a threshold well before the natural end), "late" ones
  near the end, "never" ones (hard problems) scatter over many wrong answers, so certainty
  stays low however long they run. Their weights and ranges are assumed, chosen to land on the
  paper's aggregate figures: the median reasoning trace settles at ~0.3 of its length (Fig. 2:
  AMC23 median 2.7K tokens generated, 830 needed); threshold early exit saves 9-52% of tokens
  on self-consistency at equal accuracy (Fig. 7; >47% on SC-GSM8K); Certaindex at a fixed step
  correlates with the compute still needed (Pearson 0.17-0.75, mean 0.52, Fig. 12; this model:
  `benchmarks/repro_dynasor.py` prints its own).
- Certaindex at probe k (after k x `probe_tokens` tokens per branch): the paper's measure for
  self-consistency (§3.1), 1 - H / ln n over the clusters of the n branches' probed answers (a
  branch that already ended shows its final answer); 1 when all agree, 0 when all differ.

The trajectory (`RequestSpec.probe_trace`, the same on every branch) is trace knowledge, like
a request's true output length: only the simulator's executor reads it, reporting a value when a
branch reaches a probe point. `ReasoningProgram` also keeps the plurality answer at every probe,
so a run's answers can be checked against full compute (`answer_at`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from shunter.core.types import ProbeTrace, RequestSpec
from shunter.errors import ConfigError
from shunter.workload.arrival import STREAM_ARRIVALS, arrival_times, seeded_rng
from shunter.workload.sharegpt import SHAREGPT_HASH_BLOCK_SIZE, session_base_id

__all__ = ["CONVERGENCE", "Convergence", "ReasoningProgram", "ReasoningShape",
           "ReasoningWorkload", "certaindex", "reasoning_programs"]

STREAM_PROGRAMS = 2  # the seed stream of lengths, classes and answers (0: arrivals)
CORRECT_ANSWER = 0


@dataclass(frozen=True, slots=True)
class Convergence:
    """One difficulty class: its share of programs, where its branches' answers settle (a
    fraction of each branch's length, uniform in `settle`), its consensus q (uniform in
    `consensus`): the chance a branch's final answer is the correct one, and how many wrong
    answers the others pick from."""

    weight: float
    settle: tuple[float, float]
    consensus: tuple[float, float]
    num_wrong_answers: int = 3

    def check(self, name: str) -> None:
        for what, (low, high) in (("settle", self.settle), ("consensus", self.consensus)):
            if not 0.0 <= low <= high <= 1.0:
                raise ConfigError(f"class {name!r}: {what} must be a range within [0, 1], got "
                                  f"{(low, high)}")
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise ConfigError(f"class {name!r}: weight must be a finite number >= 0, got "
                              f"{self.weight}")
        if isinstance(self.num_wrong_answers, bool) or not isinstance(self.num_wrong_answers,
                                                                      int) \
                or self.num_wrong_answers < 1:
            raise ConfigError(f"class {name!r}: num_wrong_answers must be a whole number >= 1, "
                              f"got {self.num_wrong_answers!r}")


# assumed (see the module docstring): half the programs easy, a fifth hopeless
CONVERGENCE: Mapping[str, Convergence] = MappingProxyType({
    "early": Convergence(0.5, (0.1, 0.45), (0.85, 1.0)),
    "late": Convergence(0.3, (0.55, 0.95), (0.75, 1.0)),
    "never": Convergence(0.2, (0.2, 0.9), (0.0, 0.4), num_wrong_answers=12),
})


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasoningShape:
    """Program sizes and how their answers converge (see the module docstring)."""

    num_branches: int = 8
    probe_tokens: int = 32  # the trace's resolution (Dynasor probes every 32-64 tokens)
    prompt_median_tokens: int = 256
    prompt_sigma: float = 0.4
    output_median_tokens: int = 384
    output_sigma: float = 0.5
    branch_sigma: float = 0.35
    max_output_tokens: int = 2048
    classes: Mapping[str, Convergence] = field(default_factory=lambda: CONVERGENCE)

    def __post_init__(self) -> None:
        for name in ("num_branches", "probe_tokens", "prompt_median_tokens",
                     "output_median_tokens", "max_output_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("prompt_sigma", "output_sigma", "branch_sigma"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value < math.inf):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.classes:
            raise ConfigError("classes must name at least one convergence class")
        for name, convergence in self.classes.items():
            convergence.check(name)
        if sum(c.weight for c in self.classes.values()) <= 0:
            raise ConfigError("classes: the weights must not all be 0")


@dataclass(frozen=True, slots=True)
class ReasoningProgram:
    """One query: its branches, and per probe its Certaindex and plurality answer."""

    program_id: str
    kind: str  # its convergence class
    branches: tuple[RequestSpec, ...]
    certainty: tuple[float, ...]  # after k x probe_tokens tokens per branch: certainty[k - 1]
    majority: tuple[int | None, ...]  # plurality of the settled answers (None: none settled)
    probe_tokens: int

    @property
    def arrival_s(self) -> float:
        return self.branches[0].arrival_s

    @property
    def num_output_tokens(self) -> int:
        """Tokens of every branch run to its natural end (full compute)."""
        return sum(b.num_output_tokens for b in self.branches)

    @property
    def final_answer(self) -> int | None:
        """The plurality answer with every branch run to its end."""
        return self.majority[-1]

    def first_round_reaching(self, threshold: float) -> int | None:
        """The first probe round whose Certaindex is >= `threshold` (1-based), or None."""
        for k, value in enumerate(self.certainty, start=1):
            if value >= threshold:
                return k
        return None

    def answer_at(self, k: int | None) -> int | None:
        """The plurality answer if stopped at probe round k (None: run to the end)."""
        if k is None or k >= len(self.majority):
            return self.final_answer
        return self.majority[k - 1] if k >= 1 else None

    def tokens_until(self, k: int | None) -> int:
        """Tokens the branches generate if all are stopped at probe round k (None: none is)."""
        if k is None:
            return self.num_output_tokens
        return sum(min(b.num_output_tokens, k * self.probe_tokens) for b in self.branches)


@dataclass(frozen=True, slots=True)
class ReasoningWorkload:
    programs: tuple[ReasoningProgram, ...]

    @property
    def specs(self) -> list[RequestSpec]:
        """Every branch, by arrival (programs in order, branches in order)."""
        return [b for p in sorted(self.programs, key=lambda p: p.arrival_s) for b in p.branches]

    @property
    def num_output_tokens(self) -> int:
        return sum(p.num_output_tokens for p in self.programs)


def certaindex(counts: np.ndarray, num_branches: int) -> float:
    """1 - H / ln n over answer clusters of the given sizes (the paper's self-consistency
    Certaindex, normalized entropy); one branch: 1 if it has an answer cluster, else 0."""
    sizes = counts[counts > 0]
    if num_branches == 1:
        return 1.0 if sizes.size else 0.0
    p = sizes / num_branches
    value = 1.0 + float(np.sum(p * np.log(p))) / math.log(num_branches)
    return min(max(value, 0.0), 1.0)


def reasoning_programs(num_programs: int, *, rate: float | None, shape: ReasoningShape | None = None,
                       seed: int = 0) -> ReasoningWorkload:
    """`num_programs` self-consistency programs (see the module docstring)."""
    if isinstance(num_programs, bool) or not isinstance(num_programs, int) or num_programs < 1:
        raise ConfigError(f"num_programs must be a whole number >= 1, got {num_programs!r}")
    if rate is not None and not (isinstance(rate, int | float) and 0 < rate < math.inf):
        raise ConfigError(f"rate must be a finite number > 0 programs/s (or None: a batch), "
                          f"got {rate!r}")
    shape = shape or ReasoningShape()
    starts = (np.zeros(num_programs) if rate is None
              else arrival_times(num_programs, seeded_rng(seed, STREAM_ARRIVALS), rate))
    rng = seeded_rng(seed, STREAM_PROGRAMS)
    names = list(shape.classes)
    weights = np.array([shape.classes[n].weight for n in names], dtype=np.float64)
    kinds = rng.choice(len(names), size=num_programs, p=weights / weights.sum())
    programs = tuple(_program(f"q{p}", float(starts[p]), names[kinds[p]], shape, rng)
                     for p in range(num_programs))
    return ReasoningWorkload(programs)


def _program(program_id: str, start_s: float, kind: str, shape: ReasoningShape,
             rng: np.random.Generator) -> ReasoningProgram:
    n = shape.num_branches
    convergence = shape.classes[kind]
    prompt = max(1, round(shape.prompt_median_tokens * rng.lognormal(0.0, shape.prompt_sigma)))
    natural = shape.output_median_tokens * rng.lognormal(0.0, shape.output_sigma)
    lengths = np.clip(np.rint(natural * rng.lognormal(0.0, shape.branch_sigma, n)), 1,
                      shape.max_output_tokens).astype(np.int64)
    settle = np.ceil(rng.uniform(*convergence.settle, n) * lengths).astype(np.int64)
    consensus = rng.uniform(*convergence.consensus)
    finals = np.where(rng.random(n) < consensus, CORRECT_ANSWER,
                      rng.integers(1, convergence.num_wrong_answers + 1, n))
    certainty, majority = _trajectory(lengths, np.minimum(settle, lengths), finals,
                                      convergence.num_wrong_answers + 1, shape.probe_tokens)
    trace = ProbeTrace(shape.probe_tokens, certainty)
    block = SHAREGPT_HASH_BLOCK_SIZE
    base = session_base_id(program_id)
    hash_ids = tuple(range(base, base + prompt // block))
    branches = tuple(RequestSpec(
        request_id=f"{program_id}b{b}", arrival_s=start_s, num_prompt_tokens=prompt,
        num_output_tokens=int(lengths[b]), max_output_tokens=shape.max_output_tokens,
        program_id=program_id, hash_ids=hash_ids, hash_block_size=block, probe_trace=trace)
        for b in range(n))
    return ReasoningProgram(program_id, kind, branches, certainty, majority, shape.probe_tokens)


def _trajectory(lengths: np.ndarray, settle: np.ndarray, finals: np.ndarray, num_answers: int,
                probe_tokens: int) -> tuple[tuple[float, ...], tuple[int | None, ...]]:
    """Certaindex and plurality answer at every probe up to the longest branch's end."""
    n = len(lengths)
    num_probes = -(-int(lengths.max()) // probe_tokens)
    certainty: list[float] = []
    majority: list[int | None] = []
    for k in range(1, num_probes + 1):
        settled = settle <= k * probe_tokens  # (settle <= length: an ended branch too)
        counts = np.bincount(finals[settled], minlength=num_answers)
        singletons = np.ones(n - int(settled.sum()), dtype=np.int64)  # unsettled: each alone
        certainty.append(certaindex(np.concatenate((counts, singletons)), n))
        # ties go to the smaller id (the correct answer, if it is among them)
        majority.append(int(np.argmax(counts)) if settled.any() else None)
    return tuple(certainty), tuple(majority)
