"""Shared plumbing of the cluster reproductions (repro_llumnix/distserve/splitwise/d2lpm/
cost_router): trace paths, one simulation -> summary, capacity search, and the table."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from shunter.core.types import RequestSpec
from shunter.metrics import summarize
from shunter.metrics.record import RequestRecord
from shunter.metrics.summary import Summary
from shunter.sim.config import SimConfig
from shunter.sim.runner import SimRun, simulate

__all__ = ["SHARED", "Timer", "max_rate", "print_table", "program_latencies", "run"]

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces"


def run(config: SimConfig, specs: Sequence[RequestSpec], **summary_kwargs: object,
        ) -> tuple[Summary, SimRun]:
    sim = simulate(config, specs)
    return summarize(sim.records, **summary_kwargs), sim  # type: ignore[arg-type]


def program_latencies(records: Sequence[RequestRecord]) -> np.ndarray:
    """Per program (`program_id`): its first call's arrival to its last call's finish."""
    start: dict[str | None, float] = {}
    end: dict[str | None, float] = {}
    for r in records:
        start[r.program_id] = min(start.get(r.program_id, np.inf), r.arrival_s)
        end[r.program_id] = max(end.get(r.program_id, -np.inf), r.finish_s)
    return np.array([end[p] - start[p] for p in start])


def max_rate(meets: Callable[[float], bool], lo: float, hi: float, precision: float) -> float:
    """The highest rate in [lo, hi] for which `meets` holds, by geometric bisection to a
    relative `precision` (0 if even `lo` fails)."""
    if not meets(lo):
        return 0.0
    if meets(hi):
        return hi
    while hi / lo > 1 + precision:
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if meets(mid) else (lo, mid)
    return lo


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
                notes: Sequence[str] = ()) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console = Console(width=160)
    console.print(table)
    for note in notes:
        console.print(note)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __str__(self) -> str:
        return f"{time.perf_counter() - self.start:.0f} s"
