"""Read Vidur's per-request output files and summarize them with our metric definitions.

Pure stdlib + numpy, no Vidur import: it runs in the project venv on files Vidur wrote. The
column mapping is documented in `benchmarks._external.vidur`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ARRIVAL_SERIES_FILE",
    "PERCENTILES",
    "REQUEST_METRICS_FILE",
    "VidurRequest",
    "read_vidur_requests",
    "summarize",
]

REQUEST_METRICS_FILE = "request_metrics.csv"
ARRIVAL_SERIES_FILE = Path("plots") / "request_arrival_time_series.csv"
PERCENTILES = (50, 90, 99)

_ID_COLUMN = "Request Id"
_ARRIVAL_TIME_COLUMN = "Time (sec)"


@dataclass(frozen=True, slots=True, kw_only=True)
class VidurRequest:
    """One request as Vidur simulated it; latencies are None if it never completed."""

    request_id: int
    arrival_s: float
    num_prompt_tokens: int
    num_output_tokens: int
    ttft_s: float | None
    e2e_s: float | None
    queue_s: float | None
    num_restarts: int

    @property
    def tpot_s(self) -> float | None:
        """(E2E - TTFT) / (out - 1), as vLLM's benchmark; None for single-token outputs."""
        if self.e2e_s is None or self.ttft_s is None or self.num_output_tokens <= 1:
            return None
        return (self.e2e_s - self.ttft_s) / (self.num_output_tokens - 1)

    @property
    def finish_s(self) -> float | None:
        return None if self.e2e_s is None else self.arrival_s + self.e2e_s


def _optional_float(text: str) -> float | None:
    if text == "":
        return None
    value = float(text)
    return None if math.isnan(value) else value


def _read_arrivals(run_dir: Path) -> list[float]:
    # One row per RequestArrivalEvent, written in event order. Arrival events are popped from the
    # heap in time order and ids are assigned in generation (= arrival) order, so row i is id i.
    with open(run_dir / ARRIVAL_SERIES_FILE, newline="") as f:
        return [float(row[_ARRIVAL_TIME_COLUMN]) for row in csv.DictReader(f)]


def read_vidur_requests(run_dir: Path) -> list[VidurRequest]:
    """Parse `run_dir/request_metrics.csv` plus the arrival series; sorted by request id."""
    run_dir = Path(run_dir)
    arrivals = _read_arrivals(run_dir)
    with open(run_dir / REQUEST_METRICS_FILE, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: int(float(row[_ID_COLUMN])))
    if len(rows) != len(arrivals):
        raise ValueError(f"{run_dir}: {len(rows)} request rows but {len(arrivals)} arrivals")
    requests = []
    for index, (row, arrival_s) in enumerate(zip(rows, arrivals, strict=True)):
        request_id = int(float(row[_ID_COLUMN]))
        if request_id != index:
            raise ValueError(f"{run_dir}: request ids are not 0..N-1 (row {index} has {request_id})")
        restarts = _optional_float(row["request_num_restarts"])
        requests.append(VidurRequest(
            request_id=request_id,
            arrival_s=arrival_s,
            num_prompt_tokens=int(float(row["request_num_prefill_tokens"])),
            num_output_tokens=int(float(row["request_num_decode_tokens"])),
            ttft_s=_optional_float(row["prefill_e2e_time"]),
            e2e_s=_optional_float(row["request_e2e_time"]),
            queue_s=_optional_float(row["request_scheduling_delay"]),
            num_restarts=0 if restarts is None else int(restarts),
        ))
    _check_inter_arrival(run_dir, rows, arrivals)
    return requests


def _check_inter_arrival(run_dir: Path, rows: list[dict[str, str]], arrivals: list[float]) -> None:
    # Vidur also records arrival_i - arrival_{i-1} per request; if the two files disagree, our
    # id <-> arrival alignment is wrong and every latency we derive would be misattributed.
    for index in range(1, len(rows)):
        gap_s = _optional_float(rows[index].get("request_inter_arrival_delay", ""))
        if gap_s is not None and not math.isclose(gap_s, arrivals[index] - arrivals[index - 1],
                                                  rel_tol=1e-6, abs_tol=1e-9):
            raise ValueError(f"{run_dir}: arrival series and inter-arrival delays disagree at "
                             f"request {index}")


def _distribution(name: str, values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {f"{name}_mean_s": None, **{f"{name}_p{p}_s": None for p in PERCENTILES}}
    array = np.asarray(values, dtype=float)
    stats: dict[str, float | None] = {f"{name}_mean_s": float(array.mean())}
    for p in PERCENTILES:
        stats[f"{name}_p{p}_s"] = float(np.percentile(array, p))
    return stats


def summarize(requests: Sequence[VidurRequest]) -> dict[str, float | int | None]:
    """Mean/P50/P90/P99 of TTFT, TPOT, E2E, queue; completed count; throughput over the makespan.

    Makespan = last finish - first arrival (simulated seconds), over completed requests.
    """
    done = [r for r in requests if r.e2e_s is not None]
    summary: dict[str, float | int | None] = {"num_completed": len(done)}
    summary |= _distribution("ttft", [r.ttft_s for r in done if r.ttft_s is not None])
    summary |= _distribution("tpot", [t for r in done if (t := r.tpot_s) is not None])
    summary |= _distribution("e2e", [r.e2e_s for r in done if r.e2e_s is not None])
    summary |= _distribution("queue", [r.queue_s for r in done if r.queue_s is not None])
    if done:
        makespan_s = max(r.finish_s or 0.0 for r in done) - min(r.arrival_s for r in requests)
        summary["makespan_s"] = makespan_s
        summary["throughput_req_per_s"] = len(done) / makespan_s
        summary["throughput_output_tokens_per_s"] = (
            sum(r.num_output_tokens for r in done) / makespan_s)
    else:
        summary |= {"makespan_s": None, "throughput_req_per_s": None,
                    "throughput_output_tokens_per_s": None}
    summary["num_restarts"] = sum(r.num_restarts for r in requests)
    return summary
