"""Streamed runs: finished records spilled to disk as fixed-width rows, summarized at the end.

Decision (issue 4): a streamed run (`simulate(..., on_record=spill)`) does not keep records.
`RecordSpill` turns each finished record into one 49-byte row (arrival, first scheduled,
first token, last token, finish, output tokens, outcome) and writes rows to a file in chunks,
so the simulation's memory is bounded by the requests in flight, not by the run's length.
`summary()` then reads the file one column at a time (a memory map), so the peak at the end is a
few float64 columns: 8 bytes a request per column in use, instead of a record per request.

Latencies use the definitions of `shunter.metrics.summary` over completed requests (TTFT,
TPOT = (last - first token) / (out - 1) for out >= 2, E2E, queue); percentiles are exact.
Per-token metrics (ITL, service fairness) need every token and are not computed here: run
without streaming for those.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

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
_PERCENTILES = (50, 90, 99)
_COMPLETED = (FinishReason.STOP, FinishReason.LENGTH)


def _or_nan(value: float | None) -> float:
    return np.nan if value is None else value


class RecordSpill:
    """A `simulate(on_record=...)` sink: one row per record, written in chunks to `path`
    (a temporary file, deleted by `close`, when no path is given)."""

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            fd, name = tempfile.mkstemp(prefix="shunter-records-", suffix=".bin")
            os.close(fd)
            self.path, self._is_temporary = Path(name), True
        else:
            self.path, self._is_temporary = Path(path), False
        self._file = open(self.path, "wb")  # noqa: SIM115  # closed by flush/close
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
        self._chunk[:self._num_buffered].tofile(self._file)
        self._num_buffered = 0

    def rows(self) -> np.ndarray:
        """Every row so far, as a read-only memory map (no copy)."""
        self._flush()
        self._file.flush()
        if self.num_records == 0:
            return np.empty(0, dtype=RECORD_ROW)
        return np.memmap(self.path, dtype=RECORD_ROW, mode="r", shape=(self.num_records,))

    def summary(self) -> dict[str, Any]:
        """Counts, makespan, throughput and TTFT/TPOT/E2E/queue {mean, p50, p90, p99}."""
        rows = self.rows()
        done = np.flatnonzero(rows["is_completed"])
        out: dict[str, Any] = {"num_requests": self.num_records, "num_completed": int(done.size)}
        arrival = rows["arrival_s"][done]
        for name, values in (
                ("ttft_s", rows["first_token_s"][done] - arrival),
                ("e2e_s", rows["finish_s"][done] - arrival),
                ("queue_s", rows["first_scheduled_s"][done] - arrival)):
            out[name] = _stats(values)
        multi = done[rows["num_output_tokens"][done] >= 2]
        out["tpot_s"] = _stats((rows["last_token_s"][multi] - rows["first_token_s"][multi])
                               / (rows["num_output_tokens"][multi] - 1))
        if done.size:
            ends = np.fmax(rows["finish_s"], rows["last_token_s"])
            duration_s = float(np.nanmax(ends) - rows["arrival_s"].min())
            tokens = int(rows["num_output_tokens"][done].sum())
            out |= {"duration_s": duration_s, "num_output_tokens": tokens,
                    "throughput_tok_s": tokens / duration_s if duration_s > 0 else None}
        return out

    def close(self) -> None:
        self._flush()
        self._file.close()
        if self._is_temporary:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RecordSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stats(values: np.ndarray) -> dict[str, float | None]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"mean": None, **{f"p{p}": None for p in _PERCENTILES}}
    percentiles = np.percentile(values, _PERCENTILES)
    return {"mean": float(values.mean()),
            **{f"p{p}": float(v) for p, v in zip(_PERCENTILES, percentiles, strict=True)}}
