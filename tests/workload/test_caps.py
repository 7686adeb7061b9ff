"""A trace's integers are capped (`MAX_TRACE_INT` = 2^31 - 1 tokens, `MAX_ARRIVAL_S` = 1e10 s):
`input_length = 10**30` used to load and crash the metrics with a traceback, a 400-digit
timestamp crashed the reader, a 10**400 priority crashed the priority policy. Each is now a
WorkloadError naming the file, the line and the field; values at the caps still load."""

from __future__ import annotations

import json

import pytest

from shunter.core.types import FinishReason
from shunter.errors import WorkloadError
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate
from shunter.workload import load_workload
from shunter.workload.parse import MAX_ARRIVAL_S, MAX_TRACE_INT

HUGE = 10**30
GOOD = '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'


def jsonl_line(**fields: object) -> str:
    record: dict[str, object] = {"timestamp": 0, "input_length": 5, "output_length": 1}
    record.update(fields)
    return json.dumps(record)


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"input_length": HUGE}, "input_length", f"must be <= {MAX_TRACE_INT} (2^31 - 1), got {HUGE}"),
    ({"output_length": HUGE}, "output_length", f"must be <= {MAX_TRACE_INT}"),
    ({"input_length": MAX_TRACE_INT + 1}, "input_length", f"got {MAX_TRACE_INT + 1}"),
    ({"max_output_tokens": HUGE}, "max_output_tokens", f"must be <= {MAX_TRACE_INT}"),
    ({"hash_block_size": HUGE}, "hash_block_size", f"must be <= {MAX_TRACE_INT}"),
    ({"priority": HUGE}, "priority", f"must be <= {MAX_TRACE_INT}"),
    ({"priority": -HUGE}, "priority", f"must be >= {-MAX_TRACE_INT}"),
    ({"timestamp": HUGE}, "timestamp", "must be <= 10000000000000 ms (MAX_ARRIVAL_S = 1e+10 s)"),
    ({"timestamp": 10**400}, "timestamp", "(401 characters)"),
    ({"timestamp": -(10**400)}, "timestamp", "must be >= 0"),
    ({"ttft_slo_s": 10**400}, "ttft_slo_s", "must be a number > 0"),
])
def test_huge_jsonl_integers_name_the_file_line_and_field(write_file, fields, field, message):
    path = write_file("t.jsonl", GOOD + jsonl_line(**fields) + "\n")
    with pytest.raises(WorkloadError) as info:
        load_workload(path, "jsonl")
    error = info.value
    assert (error.path, error.line, error.field) == (str(path), 2, field)
    assert message in str(error)


def test_a_huge_float_timestamp_is_refused(write_file):
    path = write_file("t.jsonl", GOOD + '{"timestamp": 1e300, "input_length": 5, '
                                        '"output_length": 1}\n')
    with pytest.raises(WorkloadError, match=r"t\.jsonl:2: must be <= 10000000000000 ms"):
        load_workload(path, "jsonl")


def test_values_at_the_caps_load(write_file):
    line = jsonl_line(timestamp=int(MAX_ARRIVAL_S * 1000), input_length=MAX_TRACE_INT,
                      output_length=MAX_TRACE_INT, priority=-MAX_TRACE_INT,
                      max_output_tokens=MAX_TRACE_INT)
    [_, spec] = load_workload(write_file("t.jsonl", GOOD + line + "\n"), "jsonl")
    assert spec.arrival_s == MAX_ARRIVAL_S and spec.num_prompt_tokens == MAX_TRACE_INT


@pytest.mark.parametrize(("fmt", "header", "row", "field", "message"), [
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens", "2023-11-16 18:15:47,1e30,4",
     "ContextTokens", f"must be <= {MAX_TRACE_INT} (2^31 - 1), got '1e30'"),
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens", f"2023-11-16 18:15:47,5,{HUGE}",
     "GeneratedTokens", f"must be <= {MAX_TRACE_INT}"),
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens", "9999-11-16 18:15:47,5,4",
     "TIMESTAMP", "arrival time must be <= 1e+10 s"),
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens", "2023-11-16 18:15:47,1e999,4",
     "ContextTokens", "got '1e999'"),
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens", f"2023-11-16 18:15:47,{'9' * 5000},4",
     "ContextTokens", "(5002 characters)"),
    ("vtc", "arrival_s,client,prompt_tokens,output_tokens", "1e11,a,5,4", "arrival_s",
     "arrival time must be <= 1e+10 s"),
    ("vtc", "arrival_s,client,prompt_tokens,output_tokens", f"1,a,{HUGE},4", "prompt_tokens",
     f"must be <= {MAX_TRACE_INT}"),
    ("lengths", "num_prefill_tokens,num_decode_tokens", f"5,{HUGE}", "num_decode_tokens",
     f"must be <= {MAX_TRACE_INT}"),
    ("lengths", "num_prefill_tokens,num_decode_tokens,arrived_at", "5,4,1e12", "arrived_at",
     "arrival time must be <= 1e+10 s"),
    ("sharegpt", "conv_id,turn,user_tokens,assistant_tokens", f"c,0,{HUGE},4", "user_tokens",
     f"must be <= {MAX_TRACE_INT}"),
])
def test_huge_csv_values_name_the_file_line_and_field(write_file, fmt, header, row, field,
                                                      message):
    first = {"azure": "2023-11-16 18:15:46,5,4", "vtc": "0,a,5,4", "lengths": "5,4",
             "sharegpt": "b,0,5,4"}[fmt]
    if fmt == "lengths" and "arrived_at" in header:
        first = "5,4,0"
    path = write_file("t.csv", f"{header}\n{first}\n{row}\n")
    with pytest.raises(WorkloadError) as info:
        load_workload(path, fmt)
    error = info.value
    assert (error.path, error.line, error.field) == (str(path), 3, field)
    assert message in str(error)


def test_a_realistic_prompt_past_the_context_is_still_rejected_per_request(write_file):
    """Within the cap, a prompt longer than the model's context loads; the scheduler rejects
    that request with a reason and the others run."""
    path = write_file("t.jsonl", GOOD + jsonl_line(input_length=MAX_TRACE_INT) + "\n")
    run = simulate(SimConfig(num_blocks=512), load_workload(path, "jsonl"))
    reasons = {r.request_id: r.finish_reason for r in run.records}
    assert reasons == {"r0": FinishReason.STOP, "r1": FinishReason.REJECTED}
