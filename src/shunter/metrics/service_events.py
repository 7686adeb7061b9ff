"""Service credits and backlog changes of a run as time-sorted event streams.

Service follows VTC (Sheng et al., OSDI'24) with w_in = 1 and w_out = 2: a request adds
`num_prompt_tokens` when its first token arrives and 2 per output token at that token's time,
divided by its tenant's weight. A tenant's backlog count goes up at each arrival and down at
each end (see `service_gap` for what "end" means for unfinished and rejected requests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shunter.metrics.columns import RecordColumns

__all__ = [
    "SERVICE_WEIGHT_INPUT",
    "SERVICE_WEIGHT_OUTPUT",
    "EventStream",
    "merge_streams",
    "request_stream",
    "token_stream",
]

SERVICE_WEIGHT_INPUT = 1  # w_in: service per prompt token
SERVICE_WEIGHT_OUTPUT = 2  # w_out: service per output token


@dataclass(frozen=True, slots=True)
class EventStream:
    """Events sorted by time: each adds `service` (already weighted) and `backlog` to a tenant."""

    time_s: np.ndarray
    tenant: np.ndarray
    service: np.ndarray
    backlog: np.ndarray


def _tenant_token_times(cols: RecordColumns, requests: np.ndarray) -> np.ndarray:
    """The token times of `requests`, concatenated (a copy)."""
    if requests.size == cols.num_requests:
        return cols.token_times_s.copy()
    counts = cols.num_output_tokens[requests]
    shift = cols.token_offsets[requests] - (np.cumsum(counts) - counts)
    return cols.token_times_s[np.repeat(shift, counts) + np.arange(int(counts.sum()))]


def token_stream(cols: RecordColumns, out_service: np.ndarray) -> EventStream:
    """Output-token credits in time order, one event per (time, tenant) with the tokens
    summed: a simulator emits a whole batch per step, so this shrinks the sweep a lot.

    Sorting each tenant's times separately and merging the sorted runs costs no more than
    one global argsort and never holds an index array over every token at once.
    """
    by_tenant = np.argsort(cols.tenant_index, kind="stable")
    bounds = np.cumsum(np.bincount(cols.tenant_index, minlength=cols.num_tenants))[:-1]
    times, tenants, counts = [], [], []
    for tenant, requests in enumerate(np.split(by_tenant, bounds)):
        tenant_times = _tenant_token_times(cols, requests)
        if tenant_times.size == 0:
            continue
        tenant_times.sort()
        is_new_time = np.ones(tenant_times.size, dtype=bool)
        is_new_time[1:] = tenant_times[1:] != tenant_times[:-1]
        first = np.flatnonzero(is_new_time)
        times.append(tenant_times[first])
        tenants.append(np.full(first.size, tenant, dtype=np.int32))
        counts.append(np.diff(first, append=tenant_times.size))
    if not times:
        return EventStream(np.empty(0), np.empty(0, dtype=np.int32), np.empty(0), np.empty(0))
    time_s = np.concatenate(times)
    order = np.argsort(time_s, kind="stable")  # one sorted run per tenant: a merge
    tenant = np.concatenate(tenants)[order]
    service = np.concatenate(counts)[order] * out_service[tenant]
    return EventStream(time_s[order], tenant, service, np.zeros(order.size))


def _backlog_end_s(cols: RecordColumns) -> np.ndarray:
    """finish_s, else last token (or arrival) if rejected/aborted, else +inf (unfinished)."""
    fallback_s = np.where(np.isnan(cols.last_token_s), cols.arrival_s, cols.last_token_s)
    end_s = np.where(np.isnan(cols.finish_s), fallback_s, cols.finish_s)
    is_unfinished = ~(cols.is_completed | cols.is_rejected | cols.is_aborted)
    return np.where(np.isnan(cols.finish_s) & is_unfinished, np.inf, end_s)


def request_stream(cols: RecordColumns, weights: np.ndarray) -> EventStream:
    """Prompt credits at first tokens, +1 backlog at arrivals and -1 at (finite) ends."""
    first_token_s = cols.first_token_s
    has_first = ~np.isnan(first_token_s)
    end_s = _backlog_end_s(cols)
    enters = end_s > cols.arrival_s  # an empty [arrival, end) is never backlogged
    leaves = enters & np.isfinite(end_s)
    tenant = cols.tenant_index.astype(np.int32)
    prompt = SERVICE_WEIGHT_INPUT * cols.num_prompt_tokens[has_first] / weights[tenant[has_first]]
    num_first, num_enters, num_leaves = (int(m.sum()) for m in (has_first, enters, leaves))
    time_s = np.concatenate([first_token_s[has_first], cols.arrival_s[enters], end_s[leaves]])
    order = np.argsort(time_s, kind="stable")
    event_tenant = np.concatenate([tenant[has_first], tenant[enters], tenant[leaves]])
    service = np.concatenate([prompt, np.zeros(num_enters + num_leaves)])
    backlog = np.concatenate([np.zeros(num_first), np.ones(num_enters), -np.ones(num_leaves)])
    return EventStream(time_s[order], event_tenant[order], service[order], backlog[order])


def merge_streams(parts: list[tuple[EventStream, slice]], columns: np.ndarray,
           num_tenants: int) -> EventStream:
    """One chunk's events, in time order, with tenants renumbered as columns 0..C-1."""
    (tokens, tok), (requests, req) = parts
    time_a, time_b = tokens.time_s[tok], requests.time_s[req]
    at_b = np.searchsorted(time_a, time_b, side="right") + np.arange(time_b.size)
    is_b = np.zeros(time_a.size + time_b.size, dtype=bool)
    is_b[at_b] = True
    column_of = np.zeros(num_tenants, dtype=np.int16 if columns.size < 2**15 else np.int64)
    column_of[columns] = np.arange(columns.size)  # small ints: stable argsort is a radix sort
    merged = []
    for name in ("time_s", "tenant", "service", "backlog"):
        a, b = getattr(tokens, name)[tok], getattr(requests, name)[req]
        out = np.empty(is_b.size, dtype=column_of.dtype if name == "tenant" else a.dtype)
        out[~is_b] = column_of[a] if name == "tenant" else a
        out[is_b] = column_of[b] if name == "tenant" else b
        merged.append(out)
    return EventStream(*merged)
