"""Length CSVs (Sarathi/Vidur/Etalon, Vidur splitwise): file order, sampling, arrivals."""

from __future__ import annotations

import pytest

from shunter.core.types import RequestSpec
from shunter.errors import WorkloadError
from shunter.workload import iter_workload, load_workload
from shunter.workload.length_file import LengthWorkload
from shunter.workload.loaders import load_requests

LENGTHS = (
    "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n"
    "74,918,992,0.08\n"
    "290,905,1195,0.32\n"
    "3772,54,3826,69.85\n"
)


def _pairs(specs: list[RequestSpec]) -> list[tuple[int, int]]:
    return [(s.num_prompt_tokens, s.num_output_tokens) for s in specs]


def test_without_rate_rows_arrive_together_in_file_order(write_file) -> None:
    specs = load_workload(write_file("l.csv", LENGTHS), "lengths")
    assert specs == [
        RequestSpec(request_id="r0", arrival_s=0.0, num_prompt_tokens=74, num_output_tokens=918),
        RequestSpec(request_id="r1", arrival_s=0.0, num_prompt_tokens=290, num_output_tokens=905),
        RequestSpec(request_id="r2", arrival_s=0.0, num_prompt_tokens=3772, num_output_tokens=54),
    ]


def test_fewer_requests_take_the_first_rows(write_file) -> None:
    specs = load_workload(write_file("l.csv", LENGTHS), "lengths", num_requests=2, rate=4.0, seed=1)
    assert _pairs(specs) == [(74, 918), (290, 905)]
    assert specs[0].arrival_s == 0.0 < specs[1].arrival_s


def test_more_requests_sample_rows_with_replacement_seeded(write_file) -> None:
    path = write_file("l.csv", LENGTHS)
    specs = load_workload(path, "lengths", num_requests=50, seed=3)
    assert len(specs) == 50 and [s.request_id for s in specs[:2]] == ["r0", "r1"]
    assert set(_pairs(specs)) == {(74, 918), (290, 905), (3772, 54)}
    assert _pairs(load_workload(path, "lengths", num_requests=50, seed=3)) == _pairs(specs)
    assert _pairs(load_workload(path, "lengths", num_requests=50, seed=4)) != _pairs(specs)


def test_rate_does_not_change_the_sampled_rows(write_file) -> None:
    path = write_file("l.csv", LENGTHS)
    plain = load_workload(path, "lengths", num_requests=20, seed=5)
    timed = load_workload(path, "lengths", num_requests=20, seed=5, rate=2.0)
    assert _pairs(plain) == _pairs(timed)
    assert len({s.arrival_s for s in timed}) == 20


SPLITWISE = "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,100,10\n0.25,200,20\n0.5,300,30\n"


def test_splitwise_arrivals_are_used_unless_a_rate_is_given(write_file) -> None:
    path = write_file("s.csv", SPLITWISE)
    specs = load_workload(path, "lengths", num_requests=2)
    assert [(s.arrival_s, s.num_prompt_tokens) for s in specs] == [(0.0, 100), (0.25, 200)]
    retimed = load_workload(path, "lengths", rate=100.0, seed=0)
    assert _pairs(retimed) == [(100, 10), (200, 20), (300, 30)]
    assert [s.arrival_s for s in retimed] != [0.0, 0.25, 0.5]


def test_splitwise_backwards_times_error_or_sort(write_file) -> None:
    path = write_file("s.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n1.0,5,5\n0.5,6,6\n")
    with pytest.raises(WorkloadError, match=r"s\.csv:3: arrival time goes backwards.*'arrived_at'"):
        load_workload(path, "lengths")
    specs = load_workload(path, "lengths", sort=True)
    assert [(s.request_id, s.arrival_s) for s in specs] == [("r1", 0.5), ("r0", 1.0)]


@pytest.mark.parametrize(("row", "message"), [
    ("12,x", "l.csv:3: not a number: 'x' (field 'num_decode_tokens')"),
    ("-12,3", "l.csv:3: must be >= 0, got -12 (field 'num_prefill_tokens')"),
    ("0,3", "l.csv:3: token count must be >= 1, got 0"),
    ("12", "l.csv:3: row has only 1 cells"),
])
def test_malformed_length_row(write_file, row: str, message: str) -> None:
    path = write_file("l.csv", "num_prefill_tokens,num_decode_tokens\n5,5\n" + row + "\n")
    with pytest.raises(WorkloadError) as info:
        load_workload(path, "lengths")
    assert str(info.value).startswith(str(path.parent / message))


def test_streaming_reads_only_what_it_needs(write_file) -> None:
    """A bad row past the requested prefix is never reached by a lazy read."""
    path = write_file("l.csv", "num_prefill_tokens,num_decode_tokens\n5,5\n6,6\nbad,row\n")
    assert _pairs(list(iter_workload(path, "lengths", num_requests=2))) == [(5, 5), (6, 6)]


def test_real_length_files(traces_dir) -> None:
    sharegpt = load_workload(traces_dir / "lengths_sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
    assert len(sharegpt) == 30731 and _pairs(sharegpt[:1]) == [(74, 918)]
    arxiv = load_workload(
        traces_dir / "lengths_arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
        num_requests=40000, rate=10.0, seed=0)
    assert len(arxiv) == 40000
    assert 0.9 * 10.0 < 40000 / arxiv[-1].arrival_s < 1.1 * 10.0


@pytest.mark.parametrize("num_requests", [None, 2, 3, 50])
def test_a_replayed_length_workload_is_the_loaded_list_on_every_pass(write_file, num_requests):
    """`load_requests` holds a re-timed length file's rows, not its requests: each pass makes
    the very requests `load_workload` lists (ids, lengths, arrivals), and its len is theirs."""
    path = write_file("l.csv", LENGTHS)
    listed = load_workload(path, "lengths", num_requests=num_requests, rate=2.5, seed=4)
    replayed = load_requests(path, None, num_requests=num_requests, rate=2.5, seed=4)
    assert isinstance(replayed, LengthWorkload)
    assert len(replayed) == len(listed)
    assert list(replayed) == listed == list(replayed)
    assert listed[-1] in replayed
    # without a rate (arrivals at 0, or the file's own) it is the list itself
    assert load_requests(path, "lengths", num_requests=num_requests) == load_workload(
        path, "lengths", num_requests=num_requests)


def test_a_replayed_length_workload_checks_its_rows_when_loaded(write_file):
    path = write_file("l.csv", LENGTHS + "12,x,1,1\n")
    with pytest.raises(WorkloadError, match="num_decode_tokens"):
        load_requests(path, "lengths", num_requests=10, rate=1.0)
