"""ShareGPT turn lengths: multi-turn sessions with shared-prefix hash ids, vLLM's first turns."""

from __future__ import annotations

import pytest

from shunter.errors import WorkloadError
from shunter.workload import LoadReport, load_workload
from shunter.workload.sharegpt import session_base_id

TURNS = (
    "conv_idx,conv_id,turn,user_tokens,assistant_tokens\n"
    "0,A,0,10,20\n"
    "0,A,1,5,3\n"
    "0,A,2,0,40\n"
    "1,B,0,4,4\n"
    "2,C,0,2000,10\n"
)


def test_multi_turn_prompts_hold_the_whole_conversation(write_file) -> None:
    specs = load_workload(write_file("s.csv", TURNS), "sharegpt")
    rows = [(s.request_id, s.session_id, s.num_prompt_tokens, s.num_output_tokens) for s in specs]
    assert rows == [
        ("r0", "A", 10, 20),
        ("r1", "A", 10 + 20 + 5, 3),
        ("r2", "A", 38 + 0, 40),  # an empty user turn after turn 0 still has a prompt
        ("r3", "B", 4, 4),
        ("r4", "C", 2000, 10),
    ]
    assert all(s.hash_block_size == 16 and s.arrival_s == 0.0 for s in specs)


def test_hash_ids_make_each_turn_a_prefix_of_the_next(write_file) -> None:
    a0, a1, a2, b0, _ = load_workload(write_file("s.csv", TURNS), "sharegpt")
    base = session_base_id("A")
    # The conversation stream is 10 + 20 | 5 + 3 | 0 + 40 tokens; a turn covers prompt + output.
    assert a0.hash_ids == tuple(range(base, base + 2))  # 30 tokens -> 2 blocks
    assert a1.hash_ids == tuple(range(base, base + 3))  # 38 tokens
    assert a2.hash_ids == tuple(range(base, base + 5))  # 78 tokens
    assert a1.hash_ids[:len(a0.hash_ids)] == a0.hash_ids
    assert not set(b0.hash_ids) & set(a2.hash_ids)
    assert session_base_id("A") == base and session_base_id("A") < 2**63


def test_num_requests_cuts_in_file_order_and_rate_spaces_them(write_file) -> None:
    specs = load_workload(write_file("s.csv", TURNS), "sharegpt", num_requests=2, rate=5.0)
    assert [s.request_id for s in specs] == ["r0", "r1"]
    assert specs[0].arrival_s == 0.0 < specs[1].arrival_s


def test_more_requests_resample_whole_conversations_as_new_sessions(write_file) -> None:
    path = write_file("s.csv", TURNS)
    specs = load_workload(path, "sharegpt", num_requests=30, seed=2)
    assert len(specs) == 30
    sessions = [s.session_id for s in specs]
    assert len(set(sessions)) > 3  # repeats got fresh names
    for session in set(sessions):
        turns = [s for s in specs if s.session_id == session]
        assert session.split("~")[0] in {"A", "B", "C"}
        ids = [s.hash_ids for s in turns]
        assert all(later[:len(earlier)] == earlier for earlier, later in zip(ids, ids[1:], strict=False))
    assert [s.session_id for s in load_workload(path, "sharegpt", num_requests=30, seed=2)] == sessions
    assert [s.session_id for s in load_workload(path, "sharegpt", num_requests=30, seed=9)] != sessions


def test_first_turn_only_applies_the_vllm_filter(write_file) -> None:
    report = LoadReport()
    specs = load_workload(write_file("s.csv", TURNS), "sharegpt", first_turn_only=True, report=report)
    assert [(s.num_prompt_tokens, s.num_output_tokens) for s in specs] == [(10, 20), (4, 4)]
    assert report.num_filtered == 1  # C: prompt > 1024
    assert all(s.session_id is None and s.hash_ids is None for s in specs)


def test_zero_counts_error_or_clamp_consistently(write_file) -> None:
    path = write_file("z.csv", "conv_id,turn,user_tokens,assistant_tokens\nA,0,0,7\nA,1,3,0\n")
    with pytest.raises(WorkloadError, match=r"z\.csv:2: token count must be >= 1.*'user_tokens'"):
        load_workload(path, "sharegpt")
    report = LoadReport()
    with pytest.warns(UserWarning, match="clamped 1 zero prompt and 1 zero output"):
        specs = load_workload(path, "sharegpt", zero_tokens="clamp", report=report)
    assert [(s.num_prompt_tokens, s.num_output_tokens) for s in specs] == [(1, 7), (1 + 7 + 3, 1)]


@pytest.mark.parametrize(("rows", "message"), [
    ("A,0,1,1\nA,2,1,1\n", "s.csv:3: expected turn 1 of 'A', got 2 (field 'turn')"),
    ("A,1,1,1\n", "s.csv:2: expected turn 0 of 'A', got 1 (field 'turn')"),
    ("A,0,1,1\nB,0,1,1\nA,1,1,1\n", "s.csv:4: conversation 'A' seen earlier in the file"),
    ("A,0,x,1\n", "s.csv:2: not a number: 'x' (field 'user_tokens')"),
    (",0,1,1\n", "s.csv:2: empty conversation id (field 'conv_id')"),
])
def test_malformed_sharegpt_rows(write_file, rows: str, message: str) -> None:
    path = write_file("s.csv", "conv_id,turn,user_tokens,assistant_tokens\n" + rows)
    with pytest.raises(WorkloadError) as info:
        load_workload(path, "sharegpt")
    assert str(info.value).startswith(str(path.parent / message))


@pytest.mark.slow  # reads the 61k-row file three times: ~0.6 s
def test_real_sharegpt_turns(traces_dir) -> None:
    path = traces_dir / "sharegpt_v3_turn_lengths_mistral_tok.csv"
    report = LoadReport()
    first = load_workload(path, "sharegpt", first_turn_only=True, report=report)
    assert len(first) == 15355 and report.num_filtered == 17392 - 15355
    with pytest.raises(WorkloadError, match="token count must be >= 1"):
        load_workload(path, "sharegpt")  # 54 zero counts: a choice the user must make
    report = LoadReport()
    with pytest.warns(UserWarning):
        turns = load_workload(path, "sharegpt", zero_tokens="clamp", report=report, rate=20.0)
    assert len(turns) == 61239 and report.num_clamped == 54
    assert len({s.session_id for s in turns}) == 17392
