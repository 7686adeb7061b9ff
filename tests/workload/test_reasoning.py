"""Reasoning programs (Dynasor's workload): seeded, shaped as documented, validated."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest

from shunter.core.types import ProbeTrace
from shunter.errors import ConfigError
from shunter.workload.reasoning import (
    CONVERGENCE,
    Convergence,
    ReasoningShape,
    certaindex,
    reasoning_programs,
)


def test_the_same_seed_gives_the_same_programs_and_another_seed_others():
    a = reasoning_programs(30, rate=2.0, seed=5)
    b = reasoning_programs(30, rate=2.0, seed=5)
    c = reasoning_programs(30, rate=2.0, seed=6)
    assert a == b
    assert a.specs == b.specs and [s.probe_trace for s in a.specs] == [s.probe_trace for s in b.specs]
    assert a.specs != c.specs


def test_branches_share_the_program_prompt_and_arrival_and_carry_its_trajectory():
    work = reasoning_programs(20, rate=1.0, seed=1, shape=ReasoningShape(num_branches=5))
    ids = set()
    for program in work.programs:
        assert len(program.branches) == 5
        first = program.branches[0]
        assert first.hash_ids and len(first.hash_ids) == first.num_prompt_tokens // 16
        for branch in program.branches:
            assert branch.program_id == program.program_id
            assert (branch.arrival_s, branch.num_prompt_tokens, branch.hash_ids) == \
                (first.arrival_s, first.num_prompt_tokens, first.hash_ids)
            assert branch.probe_trace == ProbeTrace(32, program.certainty)
        assert len({b.num_output_tokens for b in program.branches}) > 1  # branches differ
        ids.add(first.hash_ids[0])
        # the trajectory reaches the longest branch's end, and the last value is its final state
        longest = max(b.num_output_tokens for b in program.branches)
        assert len(program.certainty) == math.ceil(longest / 32)
    assert len(ids) == 20  # programs share no prefix with each other
    specs = work.specs
    assert [s.arrival_s for s in specs] == sorted(s.arrival_s for s in specs)


def test_arrivals_are_poisson_at_the_rate_or_a_batch_at_zero():
    starts = [p.arrival_s for p in reasoning_programs(2000, rate=4.0, seed=2).programs]
    gaps = np.diff(starts)
    assert np.mean(gaps) == pytest.approx(0.25, rel=0.08)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, rel=0.1)  # exponential: CV 1
    assert {p.arrival_s for p in reasoning_programs(10, rate=None).programs} == {0.0}


def test_certaindex_is_the_normalized_answer_entropy():
    assert certaindex(np.array([8]), 8) == 1.0  # all agree
    assert certaindex(np.ones(8, dtype=np.int64), 8) == 0.0  # all differ
    assert certaindex(np.array([4, 4]), 8) == pytest.approx(1 - math.log(2) / math.log(8))
    assert certaindex(np.array([7, 1]), 8) > certaindex(np.array([6, 2]), 8) \
        > certaindex(np.array([6, 1, 1]), 8)
    assert (certaindex(np.array([1]), 1), certaindex(np.array([0]), 1)) == (1.0, 0.0)


def test_certainty_only_grows_as_branches_settle_and_stays_in_range():
    for program in reasoning_programs(200, rate=None, seed=3).programs:
        values = np.array(program.certainty)
        assert ((values >= 0) & (values <= 1)).all()
        assert (np.diff(values) >= -1e-12).all(), program.program_id


def test_programs_converge_early_late_or_never_in_the_documented_shares():
    work = reasoning_programs(3000, rate=None, seed=4)
    kinds = [p.kind for p in work.programs]
    for kind, convergence in CONVERGENCE.items():
        assert kinds.count(kind) / len(kinds) == pytest.approx(convergence.weight, abs=0.03)
    threshold = 0.5
    crossing: dict[str, list[float]] = {kind: [] for kind in CONVERGENCE}
    for program in work.programs:
        k = program.first_round_reaching(threshold)
        longest = len(program.certainty)
        crossing[program.kind].append(1.0 if k is None else k / longest)
    early, late, never = (np.array(crossing[k]) for k in ("early", "late", "never"))
    assert np.median(early) < 0.5  # well before the branches' natural end
    assert 0.6 < np.median(late) < 1.0
    assert np.mean(never == 1.0) > 0.85  # hard problems mostly never settle


def test_stopping_at_the_threshold_saves_tokens_in_the_papers_range_without_new_answers():
    """The documented calibration: ~40% of the tokens saved at Certaindex 0.5 (the paper:
    9-52% on self-consistency), no program's answer changed; a low threshold changes some."""
    work = reasoning_programs(1000, rate=None, seed=1)
    saved = {}
    for threshold in (0.2, 0.5):
        rounds = [p.first_round_reaching(threshold) for p in work.programs]
        used = sum(p.tokens_until(k) for p, k in zip(work.programs, rounds, strict=True))
        saved[threshold] = 1 - used / work.num_output_tokens
        changed = sum(p.answer_at(k) != p.final_answer
                      for p, k in zip(work.programs, rounds, strict=True))
        assert (changed == 0) == (threshold == 0.5), (threshold, changed)
    assert 0.3 < saved[0.5] < 0.5 and saved[0.2] > saved[0.5]


def test_certainty_early_on_predicts_the_compute_still_needed():
    """Fig. 12 of the paper: Certaindex at a fixed step correlates with the steps to the
    solution (|Pearson| 0.17-0.75, mean 0.52); here at 128 tokens."""
    work = reasoning_programs(1000, rate=None, seed=1)
    early = [p.certainty[min(4, len(p.certainty)) - 1] for p in work.programs]
    needed = []
    for p in work.programs:  # tokens per branch until the answer is final for good
        k = len(p.majority)
        while k > 1 and p.majority[k - 2] == p.final_answer:
            k -= 1
        needed.append(k * p.probe_tokens)
    assert -0.75 < np.corrcoef(early, needed)[0, 1] < -0.3


def test_the_trace_value_at_a_token_count_is_the_last_probe_before_it():
    trace = ProbeTrace(32, (0.1, 0.4, 0.9))
    assert [trace.value_at(n) for n in (0, 31, 32, 63, 64, 96, 5000)] == \
        [0.0, 0.0, 0.1, 0.1, 0.4, 0.9, 0.9]
    for bad in [(0, (0.5,)), (32, ()), (32, (1.5,)), (32, (math.nan,))]:
        with pytest.raises(ValueError):
            ProbeTrace(*bad)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"num_branches": 0}, "num_branches"), ({"probe_tokens": 2.5}, "probe_tokens"),
    ({"output_median_tokens": -3}, "output_median_tokens"),
    ({"output_sigma": math.nan}, "output_sigma"), ({"branch_sigma": -1.0}, "branch_sigma"),
    ({"max_output_tokens": True}, "max_output_tokens"),
    ({"classes": {}}, "classes"),
    ({"classes": {"early": Convergence(1.0, (0.5, 0.2), (0.9, 1.0))}}, "settle"),
    ({"classes": {"x": Convergence(-1.0, (0.1, 0.2), (0.9, 1.0))}}, "weight"),
    ({"classes": {"x": Convergence(0.0, (0.1, 0.2), (0.9, 1.0))}}, "weights"),
])
def test_bad_shapes_are_config_errors_naming_the_field(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        ReasoningShape(**kwargs)


@pytest.mark.parametrize(("num_programs", "rate", "name"), [
    (0, 1.0, "num_programs"), (2.5, 1.0, "num_programs"), (3, 0.0, "rate"),
    (3, math.inf, "rate"), (3, math.nan, "rate"),
])
def test_bad_arguments_are_config_errors_naming_them(num_programs, rate, name):
    with pytest.raises(ConfigError, match=name):
        reasoning_programs(num_programs, rate=rate)


def test_one_branch_programs_are_single_chains():
    work = reasoning_programs(50, rate=None, seed=8, shape=replace(ReasoningShape(),
                                                                   num_branches=1))
    for program in work.programs:
        assert set(program.certainty) <= {0.0, 1.0}  # one branch: settled or not
        assert program.certainty[-1] == 1.0


def test_reasoning_programs_round_trip_through_the_canonical_jsonl(tmp_path):
    from shunter.workload.jsonl import write_jsonl
    from shunter.workload.loaders import load_workload
    specs = reasoning_programs(6, rate=2.0, seed=3).specs
    path = tmp_path / "reasoning.jsonl"
    write_jsonl(specs, path)
    assert load_workload(path) == specs  # probe traces included, floats exact


@pytest.mark.parametrize(("extra", "field", "message"), [
    ('"probe_tokens": 32', "certainty", "go together"),
    ('"certainty": [0.5]', "probe_tokens", "go together"),
    ('"probe_tokens": 32, "certainty": [0.5, 1.5]', "certainty", "numbers in [0, 1]"),
    ('"probe_tokens": 32, "certainty": []', "certainty", "numbers in [0, 1]"),
    ('"probe_tokens": 0, "certainty": [0.5]', "probe_tokens", ">= 1"),
])
def test_a_bad_probe_trace_in_jsonl_names_its_line_and_field(tmp_path, extra, field, message):
    from shunter.errors import WorkloadError
    from shunter.workload.loaders import load_workload
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 9}\n'
                    '{"timestamp": 1, "input_length": 5, "output_length": 9, ' + extra + "}\n")
    with pytest.raises(WorkloadError, match=re.escape(message)) as caught:
        load_workload(path)
    assert caught.value.line == 2 and caught.value.field == field


def test_branch_lengths_are_capped_at_max_output_tokens():
    work = reasoning_programs(30, rate=None, seed=2, shape=ReasoningShape(max_output_tokens=200))
    lengths = [b.num_output_tokens for p in work.programs for b in p.branches]
    assert max(lengths) == 200 and min(lengths) < 200  # the cap binds, and only some branches
    assert all(b.max_output_tokens == 200 for p in work.programs for b in p.branches)
