"""Time series a report plots, derived from RequestRecords alone (so they work for any run:
bench, simulator or engine).

- queue over time: requests waiting for their first token (arrived, nothing back yet) and
  requests decoding (first token seen, not finished), as step functions;
- per-tenant service over time: cumulative VTC service (w_in per prompt token when the first
  token arrives, w_out per output token when it arrives), the same weights as the fairness
  metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from shunter.metrics.fairness import SERVICE_WEIGHT_INPUT, SERVICE_WEIGHT_OUTPUT
from shunter.metrics.record import RequestRecord

__all__ = ["QueueSeries", "queue_series", "tenant_service_series"]


@dataclass(frozen=True, slots=True)
class QueueSeries:
    """Counts right after each event time (step functions, 'post' steps)."""

    times_s: np.ndarray
    num_waiting: np.ndarray
    num_decoding: np.ndarray


def queue_series(records: Sequence[RequestRecord]) -> QueueSeries:
    """How many requests wait for a first token and how many decode, after every event."""
    events: list[tuple[float, int, int]] = []  # (time, d_waiting, d_decoding)
    for r in records:
        events.append((r.arrival_s, 1, 0))
        if r.token_times_s:
            events.append((r.token_times_s[0], -1, 1))
            end = r.finish_s if r.finish_s is not None else r.token_times_s[-1]
            events.append((end, 0, -1))
        else:
            end = r.finish_s if r.finish_s is not None else r.arrival_s
            events.append((end, -1, 0))
    events.sort(key=lambda e: e[0])
    times = np.array([e[0] for e in events], dtype=float)
    waiting = np.cumsum([e[1] for e in events], dtype=np.int64) if events else np.empty(0, int)
    decoding = np.cumsum([e[2] for e in events], dtype=np.int64) if events else np.empty(0, int)
    return QueueSeries(times, waiting, decoding)


def tenant_service_series(records: Iterable[RequestRecord]
                          ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tenant -> (times, cumulative service after each time), times increasing."""
    increments: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if not r.token_times_s:
            continue
        rows = increments.setdefault(r.tenant, [])
        rows.append((r.token_times_s[0], SERVICE_WEIGHT_INPUT * r.num_prompt_tokens))
        rows += [(t, float(SERVICE_WEIGHT_OUTPUT)) for t in r.token_times_s]
    out = {}
    for tenant, rows in sorted(increments.items()):
        rows.sort(key=lambda row: row[0])
        out[tenant] = (np.array([t for t, _ in rows]), np.cumsum([s for _, s in rows]))
    return out
