"""Multi-threaded agent programs: stages of parallel calls behind barriers (Autellix's workload).

Autellix (Luo et al., 2025) evaluates single-threaded programs (chat, function calling) and
multi-threaded ones (LATS tree search, map-reduce), whose calls fan out in parallel and join
before the next step. This generator builds the second kind: the program *structure* is
synthetic and seeded, the call *lengths* are real ShareGPT turns.

- A program has `num_stages` stages of `fan_out` parallel calls each (its width: every stage of
  a program has the same, as a tree search of fixed branching does). Both are drawn per program
  from a discrete Pareto law, P(n >= k) = k^-alpha for k >= 1, capped: `stage_alpha` /
  `max_stages` and `fan_out_alpha` / `max_fan_out`. With the defaults (1.2, 16, 1.2, 32) about
  half the programs are single calls or single-threaded chains, and a few are hundreds of
  calls: heavy-tailed program sizes.
- Barrier: stage k + 1 is issued `think_time_s` after the last call of stage k finishes
  (`FollowUp.num_dependencies` = that stage's width).
- Lengths: the program's task prompt is the user turn of a ShareGPT first turn; every call adds
  the user tokens of a ShareGPT turn (any turn) and generates that turn's assistant tokens, both
  drawn uniformly with replacement from the file (seeded).
- Shared history: a stage's calls all start with the program's history (the task, then the
  thread the program follows: call 0 of each earlier stage, its instruction and its answer, as a
  tree search continues from the node it picked). Block ids follow the ShareGPT loader's scheme
  (one id per 16 tokens of the program's token stream): each call names the whole blocks of the
  history, call 0 also those its own tokens fill, so a prefix cache serves the next stage's
  history from call 0's KV.

Program starts are Poisson at `rate` programs/s; every call carries `program_id`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shunter.core.types import RequestId, RequestSpec
from shunter.errors import ConfigError
from shunter.workload.arrival import STREAM_ARRIVALS, STREAM_ROWS, arrival_times, seeded_rng
from shunter.workload.parse import LoadOptions, LoadReport
from shunter.workload.program import FollowUp, ProgramWorkload, check_program_args
from shunter.workload.sharegpt import SHAREGPT_HASH_BLOCK_SIZE, iter_conversations, session_base_id

__all__ = ["ProgramShape", "TurnPool", "discrete_pareto", "staged_programs"]

STREAM_SHAPES = 2  # the seed stream of program shapes (0, 1: arrivals, rows)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramShape:
    """Heavy-tailed program sizes: stages and fan-out per program (see the module docstring)."""

    stage_alpha: float = 1.2
    max_stages: int = 16
    fan_out_alpha: float = 1.2
    max_fan_out: int = 32

    def __post_init__(self) -> None:
        if not (self.stage_alpha > 0 and self.fan_out_alpha > 0):
            raise ConfigError(f"alphas must be > 0, got {self.stage_alpha}, {self.fan_out_alpha}")
        if self.max_stages < 1 or self.max_fan_out < 1:
            raise ConfigError(f"max_stages and max_fan_out must be >= 1, got {self.max_stages}, "
                              f"{self.max_fan_out}")


@dataclass(frozen=True, slots=True)
class TurnPool:
    """Real token counts: first-turn user prompts (tasks) and every turn's (user, assistant)."""

    task_tokens: np.ndarray
    user_tokens: np.ndarray
    output_tokens: np.ndarray

    @classmethod
    def from_sharegpt(cls, path: str | Path) -> TurnPool:
        """Every conversation of a ShareGPT turn-length file (zero outputs clamped to 1)."""
        options = LoadOptions(zero_tokens="clamp")
        tasks: list[int] = []
        turns: list[tuple[int, int]] = []
        for _, conversation in iter_conversations(path, options, LoadReport()):
            tasks.append(conversation[0][0])
            turns.extend(conversation)
        pairs = np.array(turns, dtype=np.int64)
        return cls(np.array(tasks, dtype=np.int64), pairs[:, 0], pairs[:, 1])


def discrete_pareto(rng: np.random.Generator, alpha: float, cap: int, n: int) -> np.ndarray:
    """`n` integers with P(X >= k) = k^-alpha for 1 <= k <= cap (the tail beyond is capped)."""
    tail = (1.0 - rng.random(n)) ** (-1.0 / alpha)  # 1 - U in (0, 1]: tail >= 1
    return np.minimum(np.floor(tail), cap).astype(np.int64)


def staged_programs(path: str | Path | TurnPool, *, num_programs: int, rate: float,
                    shape: ProgramShape | None = None, think_time_s: float = 0.0, seed: int = 0,
                    ) -> ProgramWorkload:
    """Multi-threaded programs from a ShareGPT turn-length file (see the module docstring)."""
    check_program_args(num_programs, rate, think_time_s)
    shape = shape or ProgramShape()
    pool = path if isinstance(path, TurnPool) else TurnPool.from_sharegpt(path)
    starts = arrival_times(num_programs, seeded_rng(seed, STREAM_ARRIVALS), rate)
    shape_rng = seeded_rng(seed, STREAM_SHAPES)
    stages = discrete_pareto(shape_rng, shape.stage_alpha, shape.max_stages, num_programs)
    fan_outs = discrete_pareto(shape_rng, shape.fan_out_alpha, shape.max_fan_out, num_programs)
    rows = seeded_rng(seed, STREAM_ROWS)
    first_calls: list[RequestSpec] = []
    follow_ups: dict[RequestId, FollowUp | tuple[FollowUp, ...]] = {}
    for p in range(num_programs):
        program = _program(p, float(starts[p]), int(stages[p]), int(fan_outs[p]), pool, rows)
        first_calls.extend(program[0])
        for before, after in zip(program, program[1:], strict=False):
            barrier = tuple(FollowUp(spec, think_time_s, len(before)) for spec in after)
            for spec in before:
                follow_ups[spec.request_id] = barrier
    return ProgramWorkload(first_calls, follow_ups)


def _program(index: int, start_s: float, num_stages: int, fan_out: int, pool: TurnPool,
             rows: np.random.Generator) -> list[list[RequestSpec]]:
    """One program's calls, stage by stage (arrival_s = the program's start; later stages' is
    replaced when they are released)."""
    program_id = f"program{index}"
    block = SHAREGPT_HASH_BLOCK_SIZE
    base = session_base_id(program_id)
    history = int(pool.task_tokens[rows.integers(len(pool.task_tokens))])
    picks = rows.integers(len(pool.user_tokens), size=(num_stages, fan_out))
    program: list[list[RequestSpec]] = []
    for k in range(num_stages):
        stage: list[RequestSpec] = []
        for j in range(fan_out):
            user = int(pool.user_tokens[picks[k, j]])
            output = max(1, int(pool.output_tokens[picks[k, j]]))
            prompt = max(1, history + user)
            shared = (prompt + output if j == 0 else history) // block
            stage.append(RequestSpec(
                request_id=f"p{index}s{k}c{j}", arrival_s=start_s, num_prompt_tokens=prompt,
                num_output_tokens=output, program_id=program_id,
                hash_ids=tuple(range(base, base + shared)), hash_block_size=block))
        history = stage[0].num_prompt_tokens + stage[0].num_output_tokens
        program.append(stage)
    return program
