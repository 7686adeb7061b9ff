"""Fairness between tenants: weighted service, Jain's index and the max backlogged service gap.

Service follows VTC (Sheng et al., "Fairness in Serving Large Language Models", OSDI'24) with
w_in = 1 and w_out = 2: a request contributes `num_prompt_tokens` when its first token
arrives (the prompt has then been served) and 2 per output token at that token's time. Tokens
a request delivered before it was aborted count; a rejected request contributes nothing.
With tenant weights, a tenant's service is divided by its weight (weighted fair share).

`max_service_gap` -- the exact definition:

    S_i(t) = service credited to tenant i at times <= t (cumulative since the run began)
    B(t)   = tenants with at least one request r such that arrival_r <= t < end_r
    gap(t) = max_{i in B(t)} S_i(t) - min_{i in B(t)} S_i(t)      (0 when |B(t)| < 2)
    max_service_gap = max over every event time t of gap(t)

where end_r is the record's `finish_s`; a record without one ends at its last token (or
at its arrival, i.e. never backlogged) when it was rejected or aborted, and never ends when it
is unfinished (still backlogged when the run stopped). All functions are right-continuous
steps, so the supremum over t is attained at an event time and the value is exact.

Caveat of "cumulative since the run began": a tenant that first arrives late starts far behind
the others, and the gap reports that distance even though no policy could have avoided it.
Compare policies on the same workload, where this offset is the same for every policy.

Cost: one sort of all token times (O(E log E), E = output tokens) plus a sweep in chunks of
event times; each chunk is a dense (distinct times x tenants present) matrix, so the sweep
is O(D * C) for D distinct event times and C tenants backlogged in a chunk -- linear in
tokens for a fixed tenant count, never quadratic in requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shunter.errors import ConfigError
from shunter.metrics.columns import RecordColumns
from shunter.metrics.stats import finite_or_none

__all__ = [
    "SERVICE_WEIGHT_INPUT",
    "SERVICE_WEIGHT_OUTPUT",
    "FairnessSummary",
    "jain_index",
    "max_service_gap",
    "summarize_fairness",
    "tenant_service",
    "tenant_weight_array",
]

SERVICE_WEIGHT_INPUT = 1  # w_in: service per prompt token
SERVICE_WEIGHT_OUTPUT = 2  # w_out: service per output token
MAX_GAP_CELLS = 1 << 22  # matrix cells per sweep chunk (32 MiB of float64)
MIN_GAP_CHUNK_EVENTS = 256


@dataclass(frozen=True, slots=True)
class FairnessSummary:
    """Run-wide fairness; None where undefined (no tenants, or nobody was served)."""

    max_service_gap: float | None
    jain_index: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"max_service_gap": self.max_service_gap, "jain_index": self.jain_index}


def tenant_weight_array(cols: RecordColumns, weights: Mapping[str, float] | None) -> np.ndarray:
    """Per-tenant weights in `cols.tenant_names` order; tenants not in `weights` weigh 1."""
    weights = weights or {}
    for name, weight in weights.items():
        if not weight > 0:
            raise ConfigError(f"tenant weight for {name!r} must be > 0, got {weight}")
    return np.array([float(weights.get(name, 1.0)) for name in cols.tenant_names])


def tenant_service(cols: RecordColumns) -> np.ndarray:
    """Unweighted service per tenant: prompt tokens of requests that got a first token + 2/token."""
    served_prompt = np.where(cols.num_output_tokens > 0, cols.num_prompt_tokens, 0)
    per_request = SERVICE_WEIGHT_INPUT * served_prompt + SERVICE_WEIGHT_OUTPUT * cols.num_output_tokens
    return np.bincount(cols.tenant_index, weights=per_request, minlength=cols.num_tenants)


def jain_index(values: np.ndarray) -> float | None:
    """Jain's index (sum x)^2 / (n * sum x^2): 1 when equal, 1/n when one gets all; None if all 0."""
    values = np.asarray(values, dtype=np.float64)
    square_sum = float(np.square(values).sum())
    if values.size == 0 or square_sum == 0:
        return None
    return finite_or_none(float(values.sum()) ** 2 / (values.size * square_sum))


@dataclass(frozen=True, slots=True)
class _Stream:
    """Events sorted by time: each adds `service` (already weighted) and `backlog` to a tenant."""

    time_s: np.ndarray
    tenant: np.ndarray
    service: np.ndarray
    backlog: np.ndarray | None  # None: no backlog changes in this stream


def _token_stream(cols: RecordColumns, out_service: np.ndarray) -> _Stream:
    order = np.argsort(cols.token_times_s)
    token_tenant = np.repeat(cols.tenant_index.astype(np.int32), cols.num_output_tokens)[order]
    return _Stream(cols.token_times_s[order], token_tenant, out_service[token_tenant], None)


def _backlog_end_s(cols: RecordColumns) -> np.ndarray:
    """When each request stops being backlogged: finish, else last token, else arrival;
    +inf for a request that had not finished when the run stopped."""
    fallback_s = np.where(np.isnan(cols.last_token_s), cols.arrival_s, cols.last_token_s)
    end_s = np.where(np.isnan(cols.finish_s), fallback_s, cols.finish_s)
    is_unfinished = ~(cols.is_completed | cols.is_rejected | cols.is_aborted)
    return np.where(np.isnan(cols.finish_s) & is_unfinished, np.inf, end_s)


def _request_stream(cols: RecordColumns, weights: np.ndarray) -> _Stream:
    """Prompt credits at first tokens, +1 backlog at arrivals and -1 at (finite) ends."""
    first_token_s = cols.first_token_s
    has_first = ~np.isnan(first_token_s)
    end_s = _backlog_end_s(cols)
    enters = end_s > cols.arrival_s  # an empty [arrival, end) is never backlogged
    leaves = enters & np.isfinite(end_s)
    tenant = cols.tenant_index
    prompt = SERVICE_WEIGHT_INPUT * cols.num_prompt_tokens[has_first] / weights[tenant[has_first]]
    num_first, num_enters, num_leaves = (int(m.sum()) for m in (has_first, enters, leaves))
    time_s = np.concatenate([first_token_s[has_first], cols.arrival_s[enters], end_s[leaves]])
    order = np.argsort(time_s)
    event_tenant = np.concatenate([tenant[has_first], tenant[enters], tenant[leaves]])
    service = np.concatenate([prompt, np.zeros(num_enters + num_leaves)])
    backlog = np.concatenate([np.zeros(num_first), np.ones(num_enters), -np.ones(num_leaves)])
    return _Stream(time_s[order], event_tenant[order], service[order], backlog[order])


def _chunk_gap(parts: list[tuple[_Stream, slice]], columns: np.ndarray, served: np.ndarray,
               backlog: np.ndarray) -> float:
    """Max gap(t) over the distinct event times of one chunk, given the state before it.

    `columns` (sorted) are the only tenants that can be backlogged inside the chunk: those
    backlogged at its start plus those with an event in it.
    """
    if columns.size < 2:
        return 0.0
    times = np.unique(np.concatenate([s.time_s[sl] for s, sl in parts]))
    num_cells = times.size * columns.size
    serv = np.zeros(num_cells)
    back = np.zeros(num_cells)
    for stream, sl in parts:
        cell = (np.searchsorted(times, stream.time_s[sl]) * columns.size
                + np.searchsorted(columns, stream.tenant[sl]))
        serv += np.bincount(cell, weights=stream.service[sl], minlength=num_cells)
        if stream.backlog is not None:
            back += np.bincount(cell, weights=stream.backlog[sl], minlength=num_cells)
    serv = np.cumsum(serv.reshape(times.size, columns.size), axis=0) + served[columns]
    back = np.cumsum(back.reshape(times.size, columns.size), axis=0) + backlog[columns]
    active = back > 0.5
    high = np.where(active, serv, -np.inf).max(axis=1)
    low = np.where(active, serv, np.inf).min(axis=1)
    has_active = active.any(axis=1)
    return float((high - low)[has_active].max()) if has_active.any() else 0.0


def _plan_chunk(streams: list[_Stream], starts: list[int], backlog: np.ndarray
                ) -> tuple[list[tuple[_Stream, slice]], np.ndarray]:
    """The next chunk: whole event-time groups, sized so its matrix stays near MAX_GAP_CELLS."""
    num_events = max(MIN_GAP_CHUNK_EVENTS, MAX_GAP_CELLS // max(int((backlog > 0).sum()), 8))
    while True:
        end_s = np.inf
        for stream, start in zip(streams, starts, strict=True):
            if start + num_events <= stream.time_s.size:
                end_s = min(end_s, float(stream.time_s[start + num_events - 1]))
        parts = [(s, slice(a, int(np.searchsorted(s.time_s, end_s, side="right"))))
                 for s, a in zip(streams, starts, strict=True)]
        tenants = np.concatenate([s.tenant[sl] for s, sl in parts])
        columns = np.union1d(np.flatnonzero(backlog > 0), tenants)
        if tenants.size * columns.size <= 4 * MAX_GAP_CELLS or num_events <= MIN_GAP_CHUNK_EVENTS:
            return parts, columns
        num_events = max(MIN_GAP_CHUNK_EVENTS, num_events // 4)


def max_service_gap(cols: RecordColumns, weights: np.ndarray | None = None) -> float | None:
    """The max service gap between backlogged tenants (module docstring); None without records."""
    if cols.num_requests == 0:
        return None
    weights = np.ones(cols.num_tenants) if weights is None else weights
    streams = [_token_stream(cols, SERVICE_WEIGHT_OUTPUT / weights), _request_stream(cols, weights)]
    served = np.zeros(cols.num_tenants)
    backlog = np.zeros(cols.num_tenants)
    starts = [0] * len(streams)
    best = 0.0
    while any(start < s.time_s.size for start, s in zip(starts, streams, strict=True)):
        parts, columns = _plan_chunk(streams, starts, backlog)
        best = max(best, _chunk_gap(parts, columns, served, backlog))
        for stream, sl in parts:
            served += np.bincount(stream.tenant[sl], weights=stream.service[sl],
                                     minlength=cols.num_tenants)
            if stream.backlog is not None:
                backlog += np.bincount(stream.tenant[sl], weights=stream.backlog[sl],
                                       minlength=cols.num_tenants)
        starts = [sl.stop for _, sl in parts]
    return finite_or_none(best)


def summarize_fairness(cols: RecordColumns,
                       tenant_weights: Mapping[str, float] | None = None) -> FairnessSummary:
    """Jain's index over per-tenant (weight-normalised) service and the max service gap."""
    weights = tenant_weight_array(cols, tenant_weights)
    return FairnessSummary(
        max_service_gap=max_service_gap(cols, weights),
        jain_index=jain_index(tenant_service(cols) / weights) if cols.num_tenants else None,
    )
