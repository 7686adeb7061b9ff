"""Multi-threaded programs: heavy-tailed stages x fan-out, barriers, real lengths, shared history."""

from collections import defaultdict

import numpy as np
import pytest

from shunter.errors import ConfigError
from shunter.workload.program import followers
from shunter.workload.sharegpt import SHAREGPT_HASH_BLOCK_SIZE
from shunter.workload.staged_program import (
    ProgramShape,
    TurnPool,
    discrete_pareto,
    staged_programs,
)

CSV = """conv_idx,conv_id,turn,user_tokens,assistant_tokens
0,A,0,40,20
0,A,1,5,70
1,B,0,300,9
2,C,0,6,0
2,C,1,0,33
"""
POOL = TurnPool(np.array([40, 300, 6]), np.array([40, 5, 300, 6, 0]), np.array([20, 70, 9, 1, 33]))


def index(request_id: str) -> tuple[int, int, int]:
    """(program, stage, call) of an id p<i>s<k>c<j>."""
    program, rest = request_id[1:].split("s")
    stage, call = rest.split("c")
    return int(program), int(stage), int(call)


def stages_of(workload) -> dict[str, list[list]]:
    """program -> its calls, stage by stage (from the ids p<i>s<k>c<j>)."""
    calls = {s.request_id: s for s in workload.first_calls}
    for entry in workload.follow_ups.values():
        calls |= {f.spec.request_id: f.spec for f in followers(entry)}
    out: dict[str, dict[int, list]] = defaultdict(dict)
    for (_, k, _), spec in sorted((index(rid), spec) for rid, spec in calls.items()):
        out[spec.program_id].setdefault(k, []).append(spec)
    return {p: [stages[k] for k in sorted(stages)] for p, stages in out.items()}


def test_the_pool_holds_first_turn_tasks_and_every_turn(tmp_path):
    path = tmp_path / "turns.csv"
    path.write_text(CSV)
    pool = TurnPool.from_sharegpt(path)
    assert pool.task_tokens.tolist() == [40, 300, 6]
    assert pool.user_tokens.tolist() == [40, 5, 300, 6, 0]
    assert pool.output_tokens.tolist() == [20, 70, 9, 1, 33]  # C's empty answer is clamped


def test_discrete_pareto_has_the_stated_tail_and_cap():
    x = discrete_pareto(np.random.default_rng(0), 1.2, 32, 40_000)
    assert x.min() == 1 and x.max() == 32
    for k in (2, 4, 8):
        assert abs((x >= k).mean() - k ** -1.2) < 0.01
    assert (discrete_pareto(np.random.default_rng(0), 50.0, 32, 1000) == 1).all()


def test_stages_are_barriers_of_equal_width():
    w = staged_programs(POOL, num_programs=40, rate=2.0, seed=3)
    programs = stages_of(w)
    assert w.num_programs == len(programs) == 40
    assert w.num_calls == sum(len(s) for stages in programs.values() for s in stages)
    shapes = {(len(stages), len(stages[0])) for stages in programs.values()}
    assert len(shapes) > 5  # programs differ in depth and width
    first = {s.request_id for s in w.first_calls}
    for stages in programs.values():
        width = len(stages[0])
        assert all(len(stage) == width for stage in stages)
        assert {s.request_id for s in stages[0]} <= first
        assert len({s.arrival_s for s in stages[0]}) == 1  # the whole first stage starts at once
        for before, after in zip(stages, stages[1:], strict=False):
            entries = {id(w.follow_ups[s.request_id]) for s in before}
            assert len(entries) == 1  # one shared barrier per stage
            barrier = w.follow_ups[before[0].request_id]
            assert [f.spec.request_id for f in barrier] == [s.request_id for s in after]
            assert all(f.num_dependencies == width for f in barrier)
        assert all(s.request_id not in w.follow_ups for s in stages[-1])
    arrivals = [s.arrival_s for s in w.first_calls]
    assert arrivals == sorted(arrivals)


def test_a_stage_shares_the_history_its_programs_main_thread_built():
    w = staged_programs(POOL, num_programs=30, rate=2.0, seed=1)
    bs = SHAREGPT_HASH_BLOCK_SIZE
    checked = 0
    for stages in stages_of(w).values():
        for before, after in zip(stages, stages[1:], strict=False):
            main = before[0]
            history = main.num_prompt_tokens + main.num_output_tokens
            for spec in after:
                assert spec.num_prompt_tokens - history in POOL.user_tokens  # real instruction
                assert spec.num_output_tokens in POOL.output_tokens  # real answer
                if spec is not after[0]:
                    # the whole blocks of the history are those the main thread filled
                    assert spec.hash_ids == main.hash_ids
                    assert len(spec.hash_ids) == history // bs
                checked += 1
            assert after[0].hash_ids[:len(main.hash_ids)] == main.hash_ids
    assert checked > 20


def test_same_seed_same_programs_and_the_rate_only_moves_starts():
    a = staged_programs(POOL, num_programs=20, rate=1.0, seed=7)
    b = staged_programs(POOL, num_programs=20, rate=1.0, seed=7)
    c = staged_programs(POOL, num_programs=20, rate=4.0, seed=7)
    assert a == b
    assert [s.num_prompt_tokens for s in a.first_calls] == [s.num_prompt_tokens for s in c.first_calls]
    assert [s.arrival_s / 4 for s in a.first_calls] == pytest.approx([s.arrival_s for s in c.first_calls])
    assert staged_programs(POOL, num_programs=20, rate=1.0, seed=8) != a


def test_bad_parameters_are_rejected():
    with pytest.raises(ConfigError, match="num_programs"):
        staged_programs(POOL, num_programs=0, rate=1.0)
    with pytest.raises(ConfigError, match="rate"):
        staged_programs(POOL, num_programs=1, rate=0.0)
    with pytest.raises(ConfigError, match="alphas"):
        ProgramShape(stage_alpha=0.0)
    with pytest.raises(ConfigError, match="max_stages"):
        ProgramShape(max_fan_out=0)


def test_real_sharegpt_lengths_give_heavy_tailed_programs(traces_dir):
    pool = TurnPool.from_sharegpt(traces_dir / "sharegpt_v3_turn_lengths_mistral_tok.csv")
    assert len(pool.task_tokens) > 10_000 and len(pool.user_tokens) > 50_000
    w = staged_programs(pool, num_programs=200, rate=1.0, seed=0)
    sizes = np.array([sum(len(s) for s in stages) for stages in stages_of(w).values()])
    assert np.median(sizes) <= 4 and sizes.max() >= 20 * np.median(sizes)
    assert sizes.max() <= ProgramShape().max_stages * ProgramShape().max_fan_out
