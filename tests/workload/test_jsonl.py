"""Canonical JSONL: exact values from hand-written lines, malformed lines, exact round trips."""

from __future__ import annotations

import math

import pytest

from shunter.core.types import RequestSpec
from shunter.errors import WorkloadError
from shunter.workload import LoadReport, load_workload, write_jsonl
from shunter.workload.jsonl import spec_to_line
from shunter.workload.parse import MAX_ARRIVAL_S

MOONCAKE_LINES = (
    '{"timestamp": 0, "input_length": 700, "output_length": 42, "hash_ids": [0, 1]}\n'
    '{"timestamp": 0, "input_length": 1025, "output_length": 7, "hash_ids": [0, 2, 3]}\n'
    '{"timestamp": 1500, "input_length": 12, "output_length": 3}\n'
)


def test_mooncake_lines_load_with_512_token_hash_blocks(write_file) -> None:
    specs = load_workload(write_file("t.jsonl", MOONCAKE_LINES), "mooncake")
    assert specs == [
        RequestSpec(request_id="r0", arrival_s=0.0, num_prompt_tokens=700, num_output_tokens=42,
                    hash_ids=(0, 1), hash_block_size=512),
        RequestSpec(request_id="r1", arrival_s=0.0, num_prompt_tokens=1025, num_output_tokens=7,
                    hash_ids=(0, 2, 3), hash_block_size=512),
        RequestSpec(request_id="r2", arrival_s=1.5, num_prompt_tokens=12, num_output_tokens=3,
                    hash_block_size=512),
    ]


def test_optional_fields_and_block_size_override(write_file) -> None:
    line = ('{"timestamp": 250.5, "input_length": 40, "output_length": 2, "hash_ids": [9, 8, 7],'
            ' "hash_block_size": 16, "request_id": "chat-1", "tenant": "acme", "priority": -2,'
            ' "session_id": "s1", "program_id": "p1", "ttft_slo_s": 0.25, "tpot_slo_s": 0.05,'
            ' "max_output_tokens": 64, "unknown_column": "ignored"}\n')
    [spec] = load_workload(write_file("t.jsonl", line), "jsonl")
    assert spec == RequestSpec(
        request_id="chat-1", arrival_s=0.2505, num_prompt_tokens=40, num_output_tokens=2,
        max_output_tokens=64, tenant="acme", priority=-2, session_id="s1", program_id="p1",
        ttft_slo_s=0.25, tpot_slo_s=0.05, hash_ids=(9, 8, 7), hash_block_size=16)


def test_blank_lines_are_skipped_and_ids_count_requests(write_file) -> None:
    text = '\n{"timestamp": 1, "input_length": 1, "output_length": 1}\n\n' \
           '{"timestamp": 2, "input_length": 1, "output_length": 1}\n'
    specs = load_workload(write_file("t.jsonl", text), "jsonl")
    assert [s.request_id for s in specs] == ["r0", "r1"]


@pytest.mark.parametrize(("line", "message"), [
    ('{"timestamp": 0, "input_length": 5}', "t.jsonl:2: missing field (field 'output_length')"),
    ('{"timestamp": 0, "input_length": "5", "output_length": 1}',
     "t.jsonl:2: must be an integer, got '5' (field 'input_length')"),
    ('{"timestamp": -3, "input_length": 5, "output_length": 1}',
     "t.jsonl:2: must be >= 0, got -3 (field 'timestamp')"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 0}',
     "t.jsonl:2: token count must be >= 1, got 0 (--zero-tokens clamp, or zero_tokens = "
     "'clamp' in a scenario, loads it as 1) (field 'output_length')"),
    ('{"timestamp": 0, "input_length": 5, "output_length": -1}',
     "t.jsonl:2: must be >= 0, got -1 (field 'output_length')"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 1', "t.jsonl:2: bad JSON"),
    ('[1, 2]', "t.jsonl:2: line is not a JSON object"),
    ('{"input_length": 5, "output_length": 1}', "t.jsonl:2: missing field (field 'timestamp')"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1, "x"]}',
     "t.jsonl:2: must be a list of integers (field 'hash_ids')"),
    ('{"timestamp": 0, "input_length": 512, "output_length": 1, "hash_ids": [1, 2, 3]}',
     "t.jsonl:2: 3 ids but the request has only 2 blocks of 512 tokens (field 'hash_ids')"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 1, "ttft_slo_s": 0}',
     "t.jsonl:2: must be a number > 0, got 0 (field 'ttft_slo_s')"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 1, "tenant": 3}',
     "t.jsonl:2: must be a string, got 3 (field 'tenant')"),
    ('{"timestamp": 0.5, "input_length": 5, "output_length": 1}',
     "t.jsonl:2: timestamp goes backwards"),
])
def test_malformed_line_names_file_line_and_field(write_file, line: str, message: str) -> None:
    path = write_file("t.jsonl", '{"timestamp": 1, "input_length": 1, "output_length": 1}\n'
                      + line + "\n")
    with pytest.raises(WorkloadError) as info:
        load_workload(path, "jsonl")
    assert str(info.value).startswith(str(path.parent / message))
    assert info.value.line == 2


def test_empty_file_and_missing_file(write_file, tmp_path) -> None:
    with pytest.raises(WorkloadError, match="has no requests"):
        load_workload(write_file("e.jsonl", "\n\n"), "jsonl")
    with pytest.raises(WorkloadError, match="no such file"):
        load_workload(tmp_path / "absent.jsonl", "jsonl")


def test_zero_lengths_clamped_when_asked_and_counted(write_file) -> None:
    path = write_file("z.jsonl", '{"timestamp": 0, "input_length": 0, "output_length": 0}\n'
                                 '{"timestamp": 1, "input_length": 3, "output_length": 0}\n')
    report = LoadReport()
    with pytest.warns(UserWarning, match="clamped 1 zero prompt and 2 zero output"):
        specs = load_workload(path, "jsonl", zero_tokens="clamp", report=report)
    assert [(s.num_prompt_tokens, s.num_output_tokens) for s in specs] == [(1, 1), (3, 1)]
    assert (report.num_clamped_prompts, report.num_clamped_outputs) == (1, 2)
    assert report.first_clamped_line == 1


def _every_field_spec(arrival_s: float) -> RequestSpec:
    return RequestSpec(request_id="x/7", arrival_s=arrival_s, num_prompt_tokens=3,
                       num_output_tokens=9, max_output_tokens=20, tenant="t", priority=3,
                       session_id="s", program_id="p", ttft_slo_s=0.1 + 0.2, tpot_slo_s=1 / 3,
                       hash_ids=(5, 6), hash_block_size=2, prompt_token_ids=(1, 2, 3))


@pytest.mark.parametrize("arrival_s", [0.0, 1.5, 0.1 + 0.2, 1 / 3, 1e-7, 123456.789012345,
                                       2.0 ** -40, math.pi * 1e4, MAX_ARRIVAL_S,
                                       math.nextafter(MAX_ARRIVAL_S, 0.0)])
def test_round_trip_is_exact_for_any_float(tmp_path, arrival_s: float) -> None:
    specs = [RequestSpec(request_id="r0", arrival_s=0.0, num_prompt_tokens=1, num_output_tokens=1),
             _every_field_spec(arrival_s)]
    path = tmp_path / "rt.jsonl"
    assert write_jsonl(specs, path) == 2
    assert load_workload(path, "jsonl") == specs


def test_round_trip_of_a_float_grid(tmp_path) -> None:
    """Many consecutive floats, some of which no float number of ms divides back to."""
    value = 4.314579
    arrivals = []
    for _ in range(300):
        arrivals.append(value)
        value = math.nextafter(value, math.inf)
    specs = [RequestSpec(request_id=f"r{i}", arrival_s=t, num_prompt_tokens=1, num_output_tokens=1)
             for i, t in enumerate(arrivals)]
    write_jsonl(specs, tmp_path / "g.jsonl")
    assert [s.arrival_s for s in load_workload(tmp_path / "g.jsonl", "jsonl")] == arrivals


def test_mooncake_style_line_is_written_compactly() -> None:
    spec = RequestSpec(request_id="r4", arrival_s=1.5, num_prompt_tokens=700, num_output_tokens=42,
                       hash_ids=(0, 1), hash_block_size=512)
    assert spec_to_line(spec, 4) == (
        '{"timestamp": 1500, "input_length": 700, "output_length": 42, "hash_ids": [0, 1]}')


def test_gzip_round_trip(tmp_path) -> None:
    specs = [_every_field_spec(2.25)]
    write_jsonl(specs, tmp_path / "w.jsonl.gz")
    assert load_workload(tmp_path / "w.jsonl.gz", "jsonl") == specs


def test_real_mooncake_trace_rewrites_byte_identically(traces_dir, tmp_path) -> None:
    source = traces_dir / "mooncake_fast25_conversation.jsonl"
    specs = load_workload(source, "mooncake")
    assert len(specs) == 12031
    assert all(len(s.hash_ids) == -(-s.num_prompt_tokens // 512) for s in specs)
    assert specs[-1].arrival_s == pytest.approx(3537.0, abs=1.0)
    write_jsonl(specs, tmp_path / "copy.jsonl")
    assert (tmp_path / "copy.jsonl").read_bytes() == source.read_bytes()


def test_a_single_optional_field_is_not_skipped(write_file) -> None:
    path = write_file("t.jsonl", '{"timestamp": 0, "input_length": 4, "output_length": 2, "tenant": "b"}\n')
    assert load_workload(path, "jsonl")[0].tenant == "b"
