"""Streamed runs: finished records spilled to disk column by column, summarized at the end.

Decision (issue 4): a streamed run (`simulate(..., on_record=spill)`) does not keep records.
`RecordSpill` turns each finished record into one 49-byte row (arrival, first scheduled,
first token, last token, finish, output tokens, outcome), buffers rows in chunks and appends
each field to its own file, so the simulation's memory is bounded by the requests in flight,
not by the run's length. `summary()` then reads the column files in row chunks, so the
end-of-run pass holds one metric's values (8 bytes a request) for the exact percentiles, never
a record per request.

Latencies use the definitions of `shunter.metrics.summary` over completed requests (TTFT,
TPOT = (last - first token) / (out - 1) for out >= 2, E2E, queue); percentiles are exact.
Per-token metrics (ITL, service fairness) need every token and are not computed here: run
without streaming for those.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from shunter.core.types import FinishReason
from shunter.metrics.record import RequestRecord

__all__ = ["RECORD_ROW", "RecordSpill"]

RECORD_ROW = np.dtype([
    ("arrival_s", "<f8"), ("first_scheduled_s", "<f8"), ("first_token_s", "<f8"),
    ("last_token_s", "<f8"), ("finish_s", "<f8"), ("num_output_tokens", "<i8"),
    ("is_completed", "?"),
])
_ROWS_PER_CHUNK = 65536
_SUMMARY_ROWS = 1 << 20  # rows read at once by `summary`
_PERCENTILES = (50, 90, 99)
_COMPLETED = (FinishReason.STOP, FinishReason.LENGTH)


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
            for name in RECORD_ROW.names}
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
            n, record.finish_reason in _COMPLETED)
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
        dtype = RECORD_ROW.fields[name][0]
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
        for name, field in (("ttft_s", "first_token_s"), ("e2e_s", "finish_s"),
                            ("queue_s", "first_scheduled_s")):
            out[name] = _stats(self._metric(num_completed, lambda lo, hi, f=field: (
                self._completed(f, lo, hi) - self._completed("arrival_s", lo, hi))))
        out["tpot_s"] = _stats(self._metric(num_completed, self._tpot))
        if num_completed:
            end_s = max(float(np.nanmax(self.column("finish_s"))),
                        float(np.nanmax(self.column("last_token_s"))))
            duration_s = end_s - float(self.column("arrival_s").min())
            out |= {"duration_s": duration_s, "num_output_tokens": num_tokens,
                    "throughput_tok_s": num_tokens / duration_s if duration_s > 0 else None}
        return out

    def _chunks(self) -> list[tuple[int, int]]:
        n, step = self.num_records, _SUMMARY_ROWS
        return [(lo, min(lo + step, n)) for lo in range(0, n, step)]

    def _completed(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of a column, completed requests only (a copy)."""
        return self.column(name)[lo:hi][self.column("is_completed")[lo:hi]]

    def _tpot(self, lo: int, hi: int) -> np.ndarray:
        num_out = self._completed("num_output_tokens", lo, hi)
        multi = num_out >= 2
        span = self._completed("last_token_s", lo, hi) - self._completed("first_token_s", lo, hi)
        return span[multi] / (num_out[multi] - 1)

    def _metric(self, size: int, chunk_values: Any) -> np.ndarray:
        """One metric's values, chunk by chunk into one array of at most `size`."""
        values = np.empty(size, dtype=np.float64)
        pos = 0
        for lo, hi in self._chunks():
            part = chunk_values(lo, hi)
            values[pos:pos + part.size] = part
            pos += part.size
        return values[:pos]

    def absorb(self, directory: str | Path) -> None:
        """Append the rows of another spill, written (and closed) under `directory`."""
        self._flush()
        sizes = {name: (Path(directory) / f"{name}.bin").stat().st_size for name in RECORD_ROW.names}
        num_rows = {size // RECORD_ROW.fields[name][0].itemsize for name, size in sizes.items()}
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


def _stats(values: np.ndarray) -> dict[str, float | None]:
    """Mean and exact percentiles, ignoring NaN (a request that never got a token); sorts
    `values` in place."""
    missing = np.isnan(values)
    if missing.any():
        values = values[~missing]
    del missing
    if values.size == 0:
        return {"mean": None, **{f"p{p}": None for p in _PERCENTILES}}
    mean = float(values.mean())
    percentiles = np.percentile(values, _PERCENTILES, overwrite_input=True)
    return {"mean": mean,
            **{f"p{p}": float(v) for p, v in zip(_PERCENTILES, percentiles, strict=True)}}
