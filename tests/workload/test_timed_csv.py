"""Azure and VTC CSV traces: exact values, timestamp parsing, malformed rows, the real files."""

from __future__ import annotations

import pytest

from shunter.core.types import RequestSpec
from shunter.errors import WorkloadError
from shunter.workload import load_workload
from shunter.workload.timed_csv import timestamp_ns

AZURE = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2023-11-16 18:15:46.6805900,374,44\n"
    "2023-11-16 18:15:50.9951690,396,109\n"
    "2023-11-16 23:59:59.9999999,10,1\n"
    "2023-11-17 00:00:00.0000001,11,2\n"
)


def test_azure_rows_become_requests_relative_to_the_first(write_file) -> None:
    specs = load_workload(write_file("a.csv", AZURE), "azure")
    assert specs == [
        RequestSpec(request_id="r0", arrival_s=0.0, num_prompt_tokens=374, num_output_tokens=44),
        RequestSpec(request_id="r1", arrival_s=4.314579, num_prompt_tokens=396, num_output_tokens=109),
        RequestSpec(request_id="r2", arrival_s=20653.3194099, num_prompt_tokens=10, num_output_tokens=1),
        RequestSpec(request_id="r3", arrival_s=20653.3194101, num_prompt_tokens=11, num_output_tokens=2),
    ]


@pytest.mark.parametrize(("text", "ns_after_midnight"), [
    ("2024-05-10 00:00:01.5", 1_500_000_000),
    ("2024-05-10T00:00:01.123456789123", 1_123_456_789),  # digits past ns are dropped
    ("2024-05-10 00:00:01", 1_000_000_000),
    ("2024-05-10 02:00:01.25+02:00", 1_250_000_000),
    ("2024-05-09 22:00:01.25-02:00", 1_250_000_000),
    ("2024-05-10 00:00:01.0095810Z", 1_009_581_000),
])
def test_timestamp_forms_of_azure_2023_and_2024(text: str, ns_after_midnight: int) -> None:
    midnight = timestamp_ns("2024-05-10 00:00:00", {})
    assert timestamp_ns(text, {}) - midnight == ns_after_midnight


def test_columns_may_come_in_any_order_with_extra_ones(write_file) -> None:
    text = "GeneratedTokens,Extra,TIMESTAMP,ContextTokens\n5,x,2024-05-10 00:00:00.5,7\n"
    [spec] = load_workload(write_file("a.csv", text), "azure")
    assert (spec.arrival_s, spec.num_prompt_tokens, spec.num_output_tokens) == (0.0, 7, 5)


@pytest.mark.parametrize(("row", "message"), [
    ("2023-11-16 18:15:47,abc,4", "a.csv:3: not a number: 'abc' (field 'ContextTokens')"),
    ("2023-11-16 18:15:47,5,-4", "a.csv:3: must be >= 0, got -4 (field 'GeneratedTokens')"),
    ("2023-11-16 18:15:47,5,0", "a.csv:3: token count must be >= 1, got 0"),
    ("2023-11-16 18:15:47,5.5,3", "a.csv:3: not an integer: '5.5' (field 'ContextTokens')"),
    ("16/11/2023 18:15,5,3", "a.csv:3: bad timestamp '16/11/2023 18:15'"),
    ("2023-11-16 18:15:40,5,3", "a.csv:3: arrival time goes backwards"),
    ("2023-11-16 18:15:47,5", "a.csv:3: row has only 2 cells"),
])
def test_malformed_azure_row_names_file_line_and_field(write_file, row: str, message: str) -> None:
    path = write_file("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                      "2023-11-16 18:15:46.6805900,374,44\n" + row + "\n")
    with pytest.raises(WorkloadError) as info:
        load_workload(path, "azure")
    assert str(info.value).startswith(str(path.parent / message))


def test_missing_column_and_empty_files(write_file) -> None:
    with pytest.raises(WorkloadError, match=r"a\.csv:1: missing column.*\(field 'GeneratedTokens'\)"):
        load_workload(write_file("a.csv", "TIMESTAMP,ContextTokens\nx,1\n"), "azure")
    with pytest.raises(WorkloadError, match=r"b\.csv:1: file is empty"):
        load_workload(write_file("b.csv", ""), "azure")
    with pytest.raises(WorkloadError, match=r"c\.csv:1: no requests after the header"):
        load_workload(write_file("c.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"), "azure")


VTC = (
    "arrival_s,client,prompt_tokens,output_tokens\n"
    "0.0,client08,13,199\n"
    "0.2079,client00,36,137\n"
    "0.2079,client08,5,1\n"
)


def test_vtc_rows_keep_times_and_clients_as_tenants(write_file) -> None:
    specs = load_workload(write_file("v.csv", VTC), "vtc")
    assert specs == [
        RequestSpec(request_id="r0", arrival_s=0.0, num_prompt_tokens=13, num_output_tokens=199,
                    tenant="client08"),
        RequestSpec(request_id="r1", arrival_s=0.2079, num_prompt_tokens=36, num_output_tokens=137,
                    tenant="client00"),
        RequestSpec(request_id="r2", arrival_s=0.2079, num_prompt_tokens=5, num_output_tokens=1,
                    tenant="client08"),
    ]


@pytest.mark.parametrize(("row", "message"), [
    ("x,client01,3,4", "v.csv:3: not a number: 'x' (field 'arrival_s')"),
    ("nan,client01,3,4", "v.csv:3: must be a finite number >= 0, got 'nan' (field 'arrival_s')"),
    ("1.0,,3,4", "v.csv:3: empty client name (field 'client')"),
    ("1.0,c,3,", "v.csv:3: not a number: '' (field 'output_tokens')"),
])
def test_malformed_vtc_row(write_file, row: str, message: str) -> None:
    path = write_file("v.csv", "arrival_s,client,prompt_tokens,output_tokens\n0.5,c,1,1\n" + row + "\n")
    with pytest.raises(WorkloadError) as info:
        load_workload(path, "vtc")
    assert str(info.value).startswith(str(path.parent / message))


def test_real_azure_conversation_trace(traces_dir) -> None:
    specs = load_workload(traces_dir / "azure2023_conv.csv", "azure")
    assert len(specs) == 19366
    assert specs[1].arrival_s == 4.314579
    assert specs[0].num_prompt_tokens == 374 and specs[0].num_output_tokens == 44
    assert 3400 < specs[-1].arrival_s < 3700  # one hour, ~5.5 req/s
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(specs, specs[1:], strict=False))


def test_real_vtc_trace(traces_dir) -> None:
    specs = load_workload(traces_dir / "vtc_lmsys_arena_multitenant.csv", "vtc")
    assert len(specs) == 1500
    assert len({s.tenant for s in specs}) == 27
    assert specs[-1].arrival_s == 600.0
