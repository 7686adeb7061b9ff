"""The entry points: format registry and detection, options, re-timing, sorting, streaming."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shunter.core.types import RequestSpec
from shunter.errors import ConfigError, WorkloadError
from shunter.workload import TRACE_FORMATS, detect_format, iter_workload, load_workload, retime

JSONL = ('{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
         '{"timestamp": 1000, "input_length": 6, "output_length": 2}\n'
         '{"timestamp": 1000, "input_length": 7, "output_length": 3}\n')


def test_registry_names_are_exactly_the_documented_ones() -> None:
    assert set(TRACE_FORMATS) == {"azure", "mooncake", "vtc", "sharegpt", "lengths", "jsonl"}


def test_unknown_format_lists_the_valid_ones(write_file) -> None:
    with pytest.raises(ValueError, match="unknown trace format 'csv'; valid: azure, mooncake, vtc"):
        load_workload(write_file("t.jsonl", JSONL), "csv")


@pytest.mark.parametrize(("first_line", "fmt"), [
    ('{"timestamp": 0, "input_length": 1, "output_length": 1}', "jsonl"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens", "azure"),
    ("arrival_s,client,prompt_tokens,output_tokens", "vtc"),
    ("conv_idx,conv_id,turn,user_tokens,assistant_tokens", "sharegpt"),
    ("num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio", "lengths"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens", "lengths"),
])
def test_detect_format_from_the_first_line(write_file, first_line: str, fmt: str) -> None:
    assert detect_format(write_file("t.txt", "\n" + first_line + "\n")) == fmt


def test_detect_format_rejects_unknown_headers(write_file) -> None:
    with pytest.raises(WorkloadError, match=r"t\.csv:1: cannot tell the format"):
        detect_format(write_file("t.csv", "a,b,c\n1,2,3\n"))


def test_load_without_format_detects_it(write_file) -> None:
    specs = load_workload(write_file("t.jsonl", JSONL))
    assert [s.num_prompt_tokens for s in specs] == [5, 6, 7]


def test_timed_trace_truncates_then_retimes_keeping_everything_else(write_file) -> None:
    path = write_file("t.jsonl", JSONL)
    head = load_workload(path, num_requests=2)
    assert [(s.arrival_s, s.num_prompt_tokens) for s in head] == [(0.0, 5), (1.0, 6)]
    retimed = load_workload(path, rate=50.0, seed=7)
    assert [s.num_prompt_tokens for s in retimed] == [5, 6, 7]
    times = [s.arrival_s for s in retimed]
    assert times[0] == 0.0 and times == sorted(times) and times != [0.0, 1.0, 1.0]
    assert load_workload(path, rate=50.0, seed=7) == retimed
    assert load_workload(path, rate=50.0, seed=8) != retimed


def test_retime_rate_is_met_on_a_long_stream() -> None:
    specs = list(retime(numbered_specs(20000), rate=8.0, seed=1))
    assert 8.0 * 0.97 < (len(specs) - 1) / specs[-1].arrival_s < 8.0 * 1.03


def numbered_specs(n: int) -> Iterator[RequestSpec]:
    return (RequestSpec(request_id=f"r{i}", arrival_s=float(i), num_prompt_tokens=1,
                        num_output_tokens=1) for i in range(n))


def test_backwards_times_error_by_default_and_sort_stably_on_request(write_file) -> None:
    path = write_file("b.jsonl", '{"timestamp": 5, "input_length": 1, "output_length": 1}\n'
                                 '{"timestamp": 3, "input_length": 2, "output_length": 1}\n'
                                 '{"timestamp": 5, "input_length": 3, "output_length": 1}\n'
                                 '{"timestamp": 1, "input_length": 4, "output_length": 1}\n')
    with pytest.raises(WorkloadError) as info:
        load_workload(path)
    assert (info.value.line, info.value.field) == (2, "timestamp")
    assert "sort=True" in str(info.value)
    specs = load_workload(path, sort=True, num_requests=3)
    assert [(s.request_id, s.arrival_s) for s in specs] == [("r3", 0.001), ("r1", 0.003), ("r0", 0.005)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_requests": 0}, "num_requests must be >= 1"),
    ({"rate": 0.0}, "rate must be > 0"),
    ({"rate": -1.0}, "rate must be > 0"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"zero_tokens": "drop"}, "zero_tokens must be one of error, clamp"),
    ({"first_turn_only": True}, "first_turn_only applies to the sharegpt format"),
])
@pytest.mark.parametrize("sort", [False, True])
def test_bad_options_are_config_errors(write_file, kwargs: dict, message: str, sort: bool) -> None:
    with pytest.raises(ConfigError, match=message):
        load_workload(write_file("t.jsonl", JSONL), "jsonl", sort=sort, **kwargs)


def test_missing_file_fails_when_the_iterator_is_made(tmp_path) -> None:
    with pytest.raises(WorkloadError, match="no such file"):
        iter_workload(tmp_path / "nope.csv", "azure")
    with pytest.raises(WorkloadError, match="is a directory"):
        iter_workload(tmp_path, "azure")


def test_iter_workload_is_lazy(write_file) -> None:
    path = write_file("t.jsonl", JSONL + "not json\n")
    stream = iter_workload(path)
    assert next(stream).num_prompt_tokens == 5  # the bad line 4 is not read yet
    with pytest.raises(WorkloadError, match=r"t\.jsonl:4: bad JSON"):
        list(stream)
