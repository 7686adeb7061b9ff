"""Agent programs from ShareGPT conversations: one program per conversation, calls chained."""

from pathlib import Path

import pytest

from shunter.errors import ConfigError
from shunter.workload.program import agent_programs

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces"
CSV = """conv_idx,conv_id,turn,user_tokens,assistant_tokens
0,A,0,10,20
0,A,1,5,7
0,A,2,3,4
1,B,0,8,9
2,C,0,6,6
2,C,1,2,0
"""


def write(tmp_path: Path) -> Path:
    path = tmp_path / "turns.csv"
    path.write_text(CSV)
    return path


def test_each_conversation_is_a_program_whose_turns_follow_one_another(tmp_path):
    w = agent_programs(write(tmp_path), num_programs=3, rate=1.0, think_time_s=0.5, seed=1)
    assert w.num_programs == 3 and w.num_calls == 6
    assert [s.request_id for s in w.first_calls] == ["p0c0", "p1c0", "p2c0"]
    assert [s.program_id for s in w.first_calls] == ["A", "B", "C"]
    arrivals = [s.arrival_s for s in w.first_calls]
    assert arrivals == sorted(arrivals) and arrivals[-1] > 0
    second = w.follow_ups["p0c0"]
    assert second.delay_s == 0.5 and second.spec.request_id == "p0c1"
    # call 1's prompt is the history: turn 0's user + assistant tokens, then its own user turn
    assert second.spec.num_prompt_tokens == 10 + 20 + 5
    assert second.spec.hash_ids[:1] == w.first_calls[0].hash_ids[:1]  # shares its prefix
    assert w.follow_ups["p0c1"].spec.request_id == "p0c2"
    assert "p0c2" not in w.follow_ups and "p1c0" not in w.follow_ups
    assert w.follow_ups["p2c0"].spec.num_output_tokens == 1  # a zero turn is clamped


def test_call_count_filters_and_caps(tmp_path):
    w = agent_programs(write(tmp_path), num_programs=2, rate=1.0, min_calls=2, max_calls=2)
    assert [s.program_id for s in w.first_calls] == ["A", "C"]
    assert sorted(w.follow_ups) == ["p0c0", "p1c0"]
    with pytest.raises(ConfigError, match="only 2 conversations"):
        agent_programs(write(tmp_path), num_programs=3, rate=1.0, min_calls=2)
    with pytest.raises(ConfigError, match="rate"):
        agent_programs(write(tmp_path), num_programs=1, rate=0.0)


def test_real_sharegpt_programs():
    path = SHARED / "sharegpt_v3_turn_lengths_mistral_tok.csv"
    if not path.exists():
        pytest.skip("../shared traces absent")
    w = agent_programs(path, num_programs=50, rate=2.0, seed=0)
    assert w.num_programs == 50 and w.num_calls > 100
    assert len({s.program_id for s in w.first_calls}) == 50
