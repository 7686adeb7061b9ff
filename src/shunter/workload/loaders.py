"""One entry point for every trace format: `load_workload` / `iter_workload`, and the registry.

Formats (`TRACE_FORMATS`): `azure`, `mooncake` (= `jsonl`), `jsonl`, `vtc` carry arrival times;
`sharegpt` and `lengths` are length files (a `lengths` file with an `arrived_at` column is
timed). Options, the same for all:

- `num_requests`: a timed trace keeps its first `num_requests` requests; a length file takes its
  first rows in file order, or samples rows with replacement (seeded) when it has fewer.
- `rate` (requests/s): a timed trace is re-timed with seeded Poisson arrivals at that rate
  (lengths, order and everything else kept); a length file gets Poisson arrivals, or without a
  rate every request arrives at t = 0.
- `seed`: drives sampling and arrivals (separate streams; same seed, same workload).
- `zero_tokens`: "error" (default) or "clamp" zero token counts to 1, see `parse`.

Order: a timed trace whose times go backwards is an error naming the line, since the lazy reader
cannot sort without holding the whole file; `load_workload(..., sort=True)` reads it all and
sorts it stably by arrival instead (then truncates and re-times). Equal times are fine.

`iter_workload` streams a timed trace with one row in memory (length files that need sampling
hold their rows). `load_workload` is `list(iter_workload(...))` unless `sort=True`.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

from shunter.core.types import RequestSpec
from shunter.errors import ConfigError, WorkloadError
from shunter.workload.arrival import STREAM_ARRIVALS, iter_arrival_times, seeded_rng
from shunter.workload.jsonl import iter_jsonl
from shunter.workload.length_file import (
    LENGTH_COLUMNS,
    LengthWorkload,
    has_arrival_column,
    iter_lengths,
)
from shunter.workload.parse import LoadOptions, LoadReport, ZeroLengthWarning, open_text
from shunter.workload.sharegpt import SHAREGPT_COLUMNS, iter_sharegpt
from shunter.workload.timed_csv import AZURE_COLUMNS, VTC_COLUMNS, iter_azure, iter_vtc

__all__ = [
    "TRACE_FORMATS",
    "TraceLoader",
    "detect_format",
    "iter_workload",
    "load_requests",
    "load_workload",
    "retime",
]

TraceLoader = Callable[[str | Path, LoadOptions, LoadReport], Iterator[RequestSpec]]


def retime(specs: Iterable[RequestSpec], rate: float, seed: int = 0) -> Iterator[RequestSpec]:
    """The same requests with seeded Poisson arrivals at `rate` requests/s, from t = 0."""
    arrivals = iter_arrival_times(seeded_rng(seed, STREAM_ARRIVALS), rate)
    for spec, arrival_s in zip(specs, arrivals, strict=False):  # arrivals never end
        yield dataclasses.replace(spec, arrival_s=arrival_s)


def _timed(reader: TraceLoader) -> TraceLoader:
    """A loader for a timed trace: the first num_requests requests, re-timed if a rate is given."""
    def load(path: str | Path, options: LoadOptions, report: LoadReport) -> Iterator[RequestSpec]:
        specs: Iterator[RequestSpec] = reader(path, options, report)
        if options.num_requests is not None:
            specs = itertools.islice(specs, options.num_requests)
        if options.rate is not None:
            specs = retime(specs, options.rate, options.seed)
        return specs

    return load


TRACE_FORMATS: dict[str, TraceLoader] = {
    "azure": _timed(iter_azure),
    "mooncake": _timed(iter_jsonl),
    "vtc": _timed(iter_vtc),
    "sharegpt": iter_sharegpt,
    "lengths": iter_lengths,
    "jsonl": _timed(iter_jsonl),
}

# Readers of the traces that carry times, in file order, for load_workload(sort=True).
_TIMED_READERS: dict[str, TraceLoader] = {
    "azure": iter_azure,
    "mooncake": iter_jsonl,
    "vtc": iter_vtc,
    "jsonl": iter_jsonl,
    "lengths": iter_lengths,  # only for a file with arrived_at and no rate, see load_workload
}

# Header columns that identify a CSV format, tried in this order.
_CSV_SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("azure", AZURE_COLUMNS),
    ("vtc", VTC_COLUMNS),
    ("sharegpt", SHAREGPT_COLUMNS),
    ("lengths", LENGTH_COLUMNS),
)


def detect_format(path: str | Path) -> str:
    """The format name of a trace, from its first line (a JSON object or a CSV header)."""
    with open_text(path) as f:
        first = next((line for line in f if line.strip()), None)
    if first is None:
        raise WorkloadError("file is empty", path=str(path), line=1)
    if first.lstrip().startswith("{"):
        return "jsonl"
    names = {cell.strip() for cell in next(csv.reader([first]))}
    for fmt, columns in _CSV_SIGNATURES:
        if names.issuperset(columns):
            return fmt
    known = "; ".join(f"{fmt}: {','.join(cols)}" for fmt, cols in _CSV_SIGNATURES)
    raise WorkloadError(f"cannot tell the format from the first line (JSON lines, or a CSV with "
                        f"columns {known})", path=str(path), line=1)


def _loader(fmt: str) -> TraceLoader:
    try:
        return TRACE_FORMATS[fmt]
    except KeyError:
        raise ConfigError(
            f"unknown trace format {fmt!r}; valid: {', '.join(TRACE_FORMATS)}") from None


def _counted(specs: Iterator[RequestSpec], report: LoadReport, path: str) -> Iterator[RequestSpec]:
    try:
        for spec in specs:
            report.num_requests += 1
            yield spec
    finally:
        if hasattr(specs, "close"):
            specs.close()  # a truncated read leaves the file open until the reader is closed
    if report.num_clamped:
        warnings.warn(ZeroLengthWarning(report.summary(path)), stacklevel=3)


def iter_workload(path: str | Path, fmt: str | None = None, *, num_requests: int | None = None,
                  rate: float | None = None, seed: int = 0, zero_tokens: str = "error",
                  first_turn_only: bool = False, report: LoadReport | None = None,
                  ) -> Iterator[RequestSpec]:
    """Requests of a trace file, lazily, sorted by arrival_s (see the module for the options).

    The format, options and file are checked now; a malformed row raises WorkloadError when
    the iteration reaches it. `report`, if given, receives the counts of clamped/filtered rows.
    """
    options = LoadOptions(num_requests=num_requests, rate=rate, seed=seed,
                          zero_tokens=zero_tokens, first_turn_only=first_turn_only)
    name = fmt if fmt is not None else detect_format(path)
    loader = _loader(name)
    if first_turn_only and name != "sharegpt":
        raise ConfigError(f"first_turn_only applies to the sharegpt format, not {name!r}")
    open_text(path).close()  # a missing file fails here, not at the first next()
    report = report if report is not None else LoadReport()
    return _counted(loader(path, options, report), report, str(path))


def load_requests(path: str | Path, fmt: str | None = None, *, num_requests: int | None = None,
                  rate: float | None = None, seed: int = 0, zero_tokens: str = "error",
                  ) -> Collection[RequestSpec]:
    """`load_workload`'s requests, not necessarily held: a length file given a `rate` is a
    `LengthWorkload` (its rows read and checked now, its requests made again on each pass, the
    same ones), any other trace the list."""
    name = fmt if fmt is not None else detect_format(path)
    if name != "lengths" or rate is None:
        return load_workload(path, name, num_requests=num_requests, rate=rate, seed=seed,
                             zero_tokens=zero_tokens)
    options = LoadOptions(num_requests=num_requests, rate=rate, seed=seed, zero_tokens=zero_tokens)
    open_text(path).close()  # a missing file: the same error as load_workload's
    report = LoadReport()
    workload = LengthWorkload(path, options, report)
    if report.num_clamped:
        warnings.warn(ZeroLengthWarning(report.summary(str(path))), stacklevel=2)
    return workload


def load_workload(path: str | Path, fmt: str | None = None, *, num_requests: int | None = None,
                  rate: float | None = None, seed: int = 0, zero_tokens: str = "error",
                  first_turn_only: bool = False, sort: bool = False,
                  report: LoadReport | None = None) -> list[RequestSpec]:
    """All requests of a trace file as a list sorted by arrival_s.

    `sort=True` accepts a timed trace whose times go backwards: it reads the whole file, sorts
    it stably by arrival, then keeps the first `num_requests` and re-times them if `rate` is set.
    """
    if not sort:
        return list(iter_workload(path, fmt, num_requests=num_requests, rate=rate, seed=seed,
                                  zero_tokens=zero_tokens, first_turn_only=first_turn_only,
                                  report=report))
    name = fmt if fmt is not None else detect_format(path)
    untimed = name == "lengths" and (rate is not None or not has_arrival_column(path))
    if name not in _TIMED_READERS or untimed:  # generated arrivals are sorted already
        return load_workload(path, name, num_requests=num_requests, rate=rate, seed=seed,
                             zero_tokens=zero_tokens, first_turn_only=first_turn_only,
                             report=report)
    LoadOptions(num_requests=num_requests, rate=rate, seed=seed, zero_tokens=zero_tokens)  # checks
    if first_turn_only:
        raise ConfigError(f"first_turn_only applies to the sharegpt format, not {name!r}")
    report = report if report is not None else LoadReport()
    options = LoadOptions(seed=seed, zero_tokens=zero_tokens, allow_unsorted=True)
    reader = _TIMED_READERS[name]
    specs = sorted(reader(path, options, report), key=lambda spec: spec.arrival_s)
    del specs[num_requests or len(specs):]
    if rate is not None:
        specs = list(retime(specs, rate, seed))
    report.num_requests = len(specs)
    if report.num_clamped:
        warnings.warn(ZeroLengthWarning(report.summary(str(path))), stacklevel=2)
    return specs

