"""Length files: (prompt, output) pairs without arrival times, and how they become requests.

Sarathi-Serve / Vidur / Etalon CSVs: `num_prefill_tokens,num_decode_tokens[,...]`. Vidur's
`splitwise_conv.csv` adds `arrived_at` (seconds): those arrivals are used as given unless a
rate is asked for.

A length file becomes requests the same way whatever its format (`requests_from_lengths`):
- `num_requests` None: every row in file order, streamed; <= the rows: the first rows in file
  order; more than the rows: `num_requests` rows sampled with replacement (seeded). With a
  `num_requests`, up to that many rows are held in memory (to know whether to sample);
- `rate` given: seeded Poisson arrivals from t = 0; no rate: every request arrives at t = 0
  (an offline batch, vLLM's request_rate=inf).
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from shunter.core.types import RequestSpec
from shunter.errors import WorkloadError
from shunter.workload.arrival import (
    STREAM_ARRIVALS,
    STREAM_ROWS,
    iter_arrival_times,
    seeded_rng,
)
from shunter.workload.parse import (
    LoadOptions,
    LoadReport,
    column_indexes,
    open_text,
    parse_count,
    parse_seconds,
)

__all__ = [
    "LENGTH_COLUMNS",
    "LengthRow",
    "LengthWorkload",
    "has_arrival_column",
    "iter_length_rows",
    "iter_lengths",
    "requests_from_lengths",
    "sample_rows",
]

LENGTH_COLUMNS = ("num_prefill_tokens", "num_decode_tokens")
ARRIVAL_COLUMN = "arrived_at"

LengthRow = tuple[int, int]  # (num_prompt_tokens, num_output_tokens), both >= 1


def iter_length_rows(path: str | Path, options: LoadOptions, report: LoadReport,
                     ) -> Iterator[tuple[float | None, int, int]]:
    """Yield (arrived_at or None, prompt, output) per row of a length CSV, lazily."""
    name = str(path)
    clamp = report.clamp_zero
    with open_text(path) as f:
        rows = csv.reader(f)
        col = column_indexes(rows, name, LENGTH_COLUMNS, optional=(ARRIVAL_COLUMN,))
        i_in, i_out = col[LENGTH_COLUMNS[0]], col[LENGTH_COLUMNS[1]]
        i_time = col.get(ARRIVAL_COLUMN)
        num_cells = max(col.values()) + 1
        prev_s = 0.0
        any_row = False
        for row in rows:
            line = rows.line_num
            if not row:
                continue
            if len(row) < num_cells:
                raise WorkloadError(f"row has only {len(row)} cells", path=name, line=line)
            arrival_s = None
            if i_time is not None:
                arrival_s = parse_seconds(row[i_time], name, line, ARRIVAL_COLUMN)
                if arrival_s < prev_s and not options.allow_unsorted:
                    raise WorkloadError(
                        f"arrival time goes backwards ({arrival_s} s after {prev_s} s); "
                        "load_workload(..., sort=True) sorts the file stably instead",
                        path=name, line=line, field=ARRIVAL_COLUMN)
                prev_s = arrival_s
            num_in = clamp(parse_count(row[i_in], name, line, LENGTH_COLUMNS[0]), is_prompt=True,
                           options=options, path=name, line=line, field=LENGTH_COLUMNS[0])
            num_out = clamp(parse_count(row[i_out], name, line, LENGTH_COLUMNS[1]),
                            is_prompt=False, options=options, path=name, line=line,
                            field=LENGTH_COLUMNS[1])
            any_row = True
            yield arrival_s, num_in, num_out
    if not any_row:
        raise WorkloadError("no requests after the header", path=name, line=1)


def has_arrival_column(path: str | Path) -> bool:
    """Whether a length CSV carries arrival times (an `arrived_at` column)."""
    with open_text(path) as f:
        header = next(csv.reader(f), [])
    return ARRIVAL_COLUMN in (cell.strip() for cell in header)


def sample_rows(rows: list[LengthRow], num_requests: int, seed: int) -> list[LengthRow]:
    """`num_requests` rows drawn uniformly with replacement (seeded)."""
    assert rows, "sampling needs at least one row"
    picks = seeded_rng(seed, STREAM_ROWS).integers(0, len(rows), num_requests)
    return [rows[i] for i in picks.tolist()]


def _chosen_rows(rows: Iterable[LengthRow], options: LoadOptions) -> Iterator[LengthRow]:
    """The first num_requests rows lazily, or a sample when the file has fewer."""
    n = options.num_requests
    if n is None:
        yield from rows
        return
    head = list(itertools.islice(rows, n))
    if len(head) == n:
        yield from head
    else:
        yield from sample_rows(head, n, options.seed)


def requests_from_lengths(rows: Iterable[LengthRow], options: LoadOptions,
                          ) -> Iterator[RequestSpec]:
    """Requests "r0", "r1", ... from (prompt, output) rows, with arrivals as the module says."""
    if options.rate is None:
        arrivals: Iterator[float] = itertools.repeat(0.0)
    else:
        arrivals = iter_arrival_times(seeded_rng(options.seed, STREAM_ARRIVALS), options.rate)
    chosen = _chosen_rows(rows, options)
    for index, ((num_in, num_out), arrival_s) in enumerate(zip(chosen, arrivals, strict=False)):
        yield RequestSpec(request_id=f"r{index}", arrival_s=arrival_s, num_prompt_tokens=num_in,
                          num_output_tokens=num_out)


def _timed_lengths(rows: Iterator[tuple[float | None, int, int]], first: tuple[float, int, int],
                   options: LoadOptions) -> Iterator[RequestSpec]:
    for index, (arrival_s, num_in, num_out) in enumerate(
            itertools.islice(itertools.chain([first], rows), options.num_requests)):
        assert arrival_s is not None, "arrived_at is a column: every row has it"
        yield RequestSpec(request_id=f"r{index}", arrival_s=arrival_s, num_prompt_tokens=num_in,
                          num_output_tokens=num_out)


class LengthWorkload(Collection[RequestSpec]):
    """A length file's requests with Poisson arrivals, made again on each pass from its rows
    (read and checked once, here): what `iter_lengths` yields, without holding it. 100,000
    requests sampled from Vidur's 19,366-row file hold the rows (about 2 MB), not 100,000
    `RequestSpec`s (30 MB). Single-tenant, as every length file is."""

    __slots__ = ("options", "rows")

    def __init__(self, path: str | Path, options: LoadOptions, report: LoadReport) -> None:
        if options.rate is None:
            raise ValueError("a length workload is replayed with Poisson arrivals: give a rate")
        rows = ((num_in, num_out) for _, num_in, num_out in iter_length_rows(path, options, report))
        # the rows _chosen_rows reads: the first num_requests, or all of them
        self.rows = list(itertools.islice(rows, options.num_requests))
        self.options = options

    def __len__(self) -> int:
        n = self.options.num_requests
        return len(self.rows) if n is None else n

    def __iter__(self) -> Iterator[RequestSpec]:
        return requests_from_lengths(self.rows, self.options)

    def __contains__(self, spec: object) -> bool:
        return any(s == spec for s in self)


def iter_lengths(path: str | Path, options: LoadOptions, report: LoadReport) -> Iterator[RequestSpec]:
    """Requests from a length CSV; `arrived_at` times are kept unless `options.rate` is set."""
    rows = iter_length_rows(path, options, report)
    first = next(rows)  # raises WorkloadError for a file without rows
    if first[0] is not None and options.rate is None:
        yield from _timed_lengths(rows, first, options)  # type: ignore[arg-type]
        return
    pairs = ((num_in, num_out) for _, num_in, num_out in itertools.chain([first], rows))
    yield from requests_from_lengths(pairs, options)
