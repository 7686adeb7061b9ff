"""Streamed runs: finished records handed to a sink as they finish, never kept as records.

Two sinks. `ColumnSink` (what `shunter simulate` uses from 20,000 requests on) keeps the
records' columns in memory, about 100 bytes a request, and gives the whole summary, ITL and
fairness included, equal to `summarize(records)` to the bit. `RecordSpill` (below; the
benchmarks' `--stream` for runs of millions of requests) keeps 49 bytes a request on disk and
summarizes the latencies only.

Decision (issue 4): a streamed run (`simulate(..., on_record=spill)`) does not keep records.
`RecordSpill` turns each finished record into one 49-byte row (arrival, first scheduled,
first token, last token, finish, output tokens, outcome), buffers rows in chunks and appends
each field to its own file, so the simulation's memory is bounded by the requests in flight,
not by the run's length. `summary()` then reads the column files in row chunks, so the
end-of-run pass holds one metric's values (8 bytes a request) for the exact percentiles, never
a record per request.

Latencies over completed requests (TTFT, TPOT, E2E, queue), the run's span and the statistics
({mean, p50, p90, p99}, exact) are the metrics package's own (`shunter.metrics.latency`,
`LatencyStats`), applied a row chunk at a time. Per-token metrics (ITL, service fairness)
need every token and are not computed here: run without streaming for those.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from shunter.metrics import latency
from shunter.metrics.columns import RecordColumns, concat_columns, to_columns
from shunter.metrics.itl import GapCounts, itl_gaps
from shunter.metrics.record import COMPLETED_REASONS, RequestRecord
from shunter.metrics.stats import LatencyStats, safe_ratio
from shunter.metrics.summary import Summary, summarize_columns
from shunter.sim.timeline import GapTally, TokenTimes

__all__ = ["RECORD_ROW", "ColumnSink", "RecordSpill"]

_ROW_FIELDS = (
    ("arrival_s", "<f8"), ("first_scheduled_s", "<f8"), ("first_token_s", "<f8"),
    ("last_token_s", "<f8"), ("finish_s", "<f8"), ("num_output_tokens", "<i8"),
    ("is_completed", "?"),
)
RECORD_ROW = np.dtype(list(_ROW_FIELDS))
_ROWS_PER_CHUNK = 65536
_SUMMARY_ROWS = 1 << 20  # rows read at once by `summary`


def _or_nan(value: float | None) -> float:
    return np.nan if value is None else value


class RecordSpill:
    """A `simulate(on_record=...)` sink: one row per record, each field appended to its own
    file `<field>.bin` under `directory` (a temporary one, deleted by `close`, if not given)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        if directory is None:
            self.directory, self._is_temporary = Path(tempfile.mkdtemp(prefix="shunter-")), True
        else:
            self.directory, self._is_temporary = Path(directory), False
            self.directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, BinaryIO] = {
            name: open(self.directory / f"{name}.bin", "wb")  # noqa: SIM115  # closed by close
            for name, _ in _ROW_FIELDS}
        self._chunk = np.empty(_ROWS_PER_CHUNK, dtype=RECORD_ROW)
        self._num_buffered = 0
        self.num_records = 0

    def __call__(self, record: RequestRecord) -> None:
        """Take one finished record (its token times are read now, never later)."""
        times = record.token_times_s
        n = len(times)
        self._chunk[self._num_buffered] = (
            record.arrival_s, _or_nan(record.first_scheduled_s),
            times[0] if n else np.nan, times[-1] if n else np.nan, _or_nan(record.finish_s),
            n, record.finish_reason in COMPLETED_REASONS)  # (record.is_completed, inlined)
        self._num_buffered += 1
        self.num_records += 1
        if self._num_buffered == _ROWS_PER_CHUNK:
            self._flush()

    def _flush(self) -> None:
        chunk = self._chunk[:self._num_buffered]
        for name, f in self._files.items():
            np.ascontiguousarray(chunk[name]).tofile(f)
            f.flush()
        self._num_buffered = 0

    def column(self, name: str) -> np.ndarray:
        """One field of every row so far, as a read-only memory map (no copy)."""
        self._flush()
        dtype = RECORD_ROW[name]
        if self.num_records == 0:
            return np.empty(0, dtype=dtype)
        return np.memmap(self.directory / f"{name}.bin", dtype=dtype, mode="r",
                         shape=(self.num_records,))

    def summary(self) -> dict[str, Any]:
        """Counts, makespan, throughput and TTFT/TPOT/E2E/queue {mean, p50, p90, p99}. Columns
        are read in row chunks from their memory maps; what is held at once is one metric's
        values (8 bytes a completed request), sorted in place for the exact percentiles."""
        self._flush()
        out: dict[str, Any] = {"num_requests": self.num_records}
        num_completed = num_tokens = 0
        for lo, hi in self._chunks():
            done = self.column("is_completed")[lo:hi]
            num_completed += int(np.count_nonzero(done))
            num_tokens += int(self.column("num_output_tokens")[lo:hi][done].sum())
        out["num_completed"] = num_completed
        for name, definition, fields in (
                ("ttft_s", latency.ttft_s, ("arrival_s", "first_token_s")),
                ("e2e_s", latency.e2e_s, ("arrival_s", "finish_s")),
                ("queue_s", latency.queue_s, ("arrival_s", "first_scheduled_s")),
                ("tpot_s", latency.tpot_s, ("first_token_s", "last_token_s", "num_output_tokens"))):
            values = self._metric(num_completed, lambda lo, hi, d=definition, f=fields: d(
                *(self._completed(field, lo, hi) for field in f)))
            out[name] = LatencyStats.of(values, may_reorder=True).to_dict()
        if num_completed:
            duration_s = latency.run_duration_s(self.column("arrival_s"), self.column("finish_s"),
                                                self.column("last_token_s"))
            out |= {"duration_s": duration_s, "num_output_tokens": num_tokens,
                    "throughput_tok_s": safe_ratio(num_tokens, duration_s)}
        return out

    def _chunks(self) -> list[tuple[int, int]]:
        n, step = self.num_records, _SUMMARY_ROWS
        return [(lo, min(lo + step, n)) for lo in range(0, n, step)]

    def _completed(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of a column, completed requests only (a copy)."""
        return self.column(name)[lo:hi][self.column("is_completed")[lo:hi]]

    def _metric(self, size: int, chunk_values: Any) -> np.ndarray:
        """One metric's values, chunk by chunk into one array of at most `size` (NaN, a request
        without that latency, dropped per chunk: `LatencyStats.of` then copies nothing)."""
        values = np.empty(size, dtype=np.float64)
        pos = 0
        for lo, hi in self._chunks():
            part = chunk_values(lo, hi)
            missing = np.isnan(part)
            if missing.any():
                part = part[~missing]
            values[pos:pos + part.size] = part
            pos += part.size
        return values[:pos]

    def absorb(self, directory: str | Path) -> None:
        """Append the rows of another spill, written (and closed) under `directory`."""
        self._flush()
        sizes = {name: (Path(directory) / f"{name}.bin").stat().st_size for name in self._files}
        num_rows = {size // RECORD_ROW[name].itemsize for name, size in sizes.items()}
        if len(num_rows) != 1:
            raise ValueError(f"{directory}: its column files hold different numbers of rows")
        for name, f in self._files.items():
            with open(Path(directory) / f"{name}.bin", "rb") as src:
                shutil.copyfileobj(src, f)
            f.flush()
        self.num_records += num_rows.pop()

    def close(self) -> None:
        self._flush()
        for f in self._files.values():
            f.close()
        if self._is_temporary:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RecordSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



class ColumnSink:
    """A `simulate(on_record=...)` sink that keeps what `summarize` reads instead of records.

    Finished records are turned into columns a chunk at a time (`to_columns`, the whole run's
    own conversion): their per-request columns are kept (about 100 bytes a request), their
    inter-token gaps are counted by value (`GapCounts`), and their token times are dropped
    unless `keep_token_times` (the max service gap between tenants reads every token; without
    them a run of two or more tenants cannot be summarized, and says so). `summary()` equals
    `summarize(records)` of the same records to the bit, in whatever order they came.

    Without `keep_token_times`, a record whose token times are ranges of a replica's step
    timeline (`TokenTimes`, every request that stayed on its replica) never has them copied:
    its gaps are counted a step at a time on that timeline (`GapTally`: 20M gaps of a
    100,000-request run are about 2M steps' values) and only its first and last token times
    and token count are kept.
    """

    __slots__ = ("_parts", "_pending", "_tallies", "chunk_records", "gaps", "keep_token_times",
                 "num_records")

    def __init__(self, *, keep_token_times: bool, chunk_records: int = 512) -> None:
        self.keep_token_times = keep_token_times
        self.chunk_records = chunk_records
        self.gaps = GapCounts()
        self.num_records = 0
        self._parts: list[RecordColumns] = []
        self._pending: list[RequestRecord] = []
        self._tallies: dict[int, GapTally] = {}  # by id() of the timeline each counts

    def __call__(self, record: RequestRecord) -> None:
        """Take one finished record (its token times are read now: a streamed run's step
        timeline forgets them later)."""
        times = record.token_times_s
        if self.keep_token_times or type(times) is not TokenTimes:
            record.token_times_s = np.asarray(times, dtype=np.float64)  # type: ignore[assignment]
        else:
            if record.finish_reason in COMPLETED_REASONS:
                tally = self._tallies.get(id(times.timeline))
                if tally is None:
                    tally = self._tallies[id(times.timeline)] = GapTally(times.timeline)
                tally.add(times)
            record.token_times_s = _Ends(times)  # type: ignore[assignment]
        self._pending.append(record)
        self.num_records += 1
        if len(self._pending) >= self.chunk_records:
            self._flush()

    def _flush(self) -> None:
        for tally in self._tallies.values():
            for gaps, counts in tally.settled:
                self.gaps.add_counts(gaps, counts)
            tally.settled.clear()
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if self.keep_token_times:
            cols = to_columns(pending)
            self.gaps.add(itl_gaps(cols))
        else:
            copied = [r for r in pending if type(r.token_times_s) is not _Ends]
            if copied:  # token times of another kind, copied whole
                self.gaps.add(itl_gaps(to_columns(copied)))
            cols = to_columns(pending, token_times=False)
        self._parts.append(cols)
        # join as it goes, every 2^18 records: a few arrays, not one set per chunk (small
        # chunks keep the token times and gaps of a flush small: 512 records of 200 tokens
        # are 0.8 MB a copy, 4,096 were 15 MB more at the peak of a 100,000-request run)
        if len(self._parts) * self.chunk_records >= 1 << 18:
            self._parts = [self.columns()]

    def __reduce__(self) -> tuple[Any, ...]:
        """A finished sink, as a split run's worker sends it (compiled, the class cannot be
        rebuilt field by field without its constructor)."""
        assert not self._tallies and not self._pending, "send a sink after finish()"
        return _sink_from, (self.keep_token_times, self.chunk_records, self.gaps,
                            self.num_records, self._parts)

    def finish(self) -> RecordColumns:
        """Every record taken has been counted: settle the gaps not yet counted (call once the
        run is over) and return the columns."""
        for tally in self._tallies.values():
            tally.settle_all()
        self._flush()
        self._tallies.clear()
        return self.columns()

    def absorb(self, other: ColumnSink) -> None:
        """Take another sink's records after this one's (a split run's workers)."""
        other.finish()
        self.finish()
        self._parts.extend(other._parts)
        self.gaps.merge(other.gaps)
        self.num_records += other.num_records

    def columns(self) -> RecordColumns:
        """Every record's columns so far, in the order they came."""
        self._flush()
        joined = concat_columns(self._parts, keep_token_times=self.keep_token_times)
        self._parts = [joined]
        return joined

    def summary(self, *, ttft_slo_s: float | None = None, tpot_slo_s: float | None = None,
                tenant_weights: Mapping[str, float] | None = None) -> Summary:
        """`summarize(records, ...)` of the records taken."""
        return summarize_columns(self.finish(), self.gaps, ttft_slo_s=ttft_slo_s,
                                 tpot_slo_s=tpot_slo_s, tenant_weights=tenant_weights)


def _sink_from(keep_token_times: bool, chunk_records: int, gaps: GapCounts, num_records: int,
               parts: list[RecordColumns]) -> ColumnSink:
    sink = ColumnSink(keep_token_times=keep_token_times, chunk_records=chunk_records)
    sink.gaps, sink.num_records, sink._parts = gaps, num_records, parts
    return sink


class _Ends:
    """What a `ColumnSink` keeps of a record's token times it counted on the timeline: their
    number and the first and last (`to_columns(..., token_times=False)` reads no more)."""

    __slots__ = ("first", "last", "num_tokens")

    def __init__(self, times: TokenTimes) -> None:
        self.num_tokens = n = len(times)
        self.first = times[0] if n else math.nan
        self.last = times[n - 1] if n else math.nan

    def __len__(self) -> int:
        return self.num_tokens

    def __getitem__(self, index: int) -> float:
        if index == 0:
            return self.first
        if index in (-1, self.num_tokens - 1):
            return self.last
        raise IndexError("a counted record keeps its first and last token times only")
