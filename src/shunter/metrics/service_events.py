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
    "TokenUnits",
    "chunk_events",
    "request_stream",
    "token_units",
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


@dataclass(frozen=True, slots=True)
class TokenUnits:
    """Output tokens summed per (tenant, time), tenant-major and time-sorted per tenant.

    A simulator emits a whole batch per step, so this is far smaller than one entry per
    token; and sorting per tenant needs no index array over every token of the run.
    """

    time_s: np.ndarray
    num_tokens: np.ndarray  # int32
    tenant_offsets: np.ndarray  # tenant j owns [tenant_offsets[j], tenant_offsets[j + 1])

    @property
    def num_tenants(self) -> int:
        return int(self.tenant_offsets.size - 1)


def token_units(cols: RecordColumns) -> TokenUnits:
    """Each tenant's token times sorted and summed per distinct time."""
    total = cols.token_times_s.size
    time_s = np.empty(total)
    num_tokens = np.empty(total, dtype=np.int32)
    offsets = np.zeros(cols.num_tenants + 1, dtype=np.int64)
    by_tenant = np.argsort(cols.tenant_index, kind="stable")
    bounds = np.cumsum(np.bincount(cols.tenant_index, minlength=cols.num_tenants))[:-1]
    for tenant, requests in enumerate(np.split(by_tenant, bounds)):
        times = _tenant_token_times(cols, requests)
        times.sort()
        is_new_time = np.ones(times.size, dtype=bool)
        is_new_time[1:] = times[1:] != times[:-1]
        first = np.flatnonzero(is_new_time)
        start, stop = offsets[tenant], offsets[tenant] + first.size
        time_s[start:stop] = times[first]
        num_tokens[start:stop] = np.diff(first, append=times.size)
        offsets[tenant + 1] = stop
    if offsets[-1] < total // 2:  # mostly shared times: keep the compact copy only
        time_s, num_tokens = time_s[:offsets[-1]].copy(), num_tokens[:offsets[-1]].copy()
    return TokenUnits(time_s[:offsets[-1]], num_tokens[:offsets[-1]], offsets)


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


def chunk_events(units: TokenUnits, unit_range: tuple[np.ndarray, np.ndarray],
                 requests: EventStream, request_range: slice, out_service: np.ndarray,
                 columns: np.ndarray) -> EventStream:
    """The events of one chunk in time order, tenants renumbered as columns 0..C-1.

    `unit_range` gives each tenant's [start, stop) in `units`; `request_range` slices the
    (time-sorted) request events. Output-token service is num_tokens * `out_service[tenant]`.
    """
    start, stop = unit_range
    lengths = stop - start
    index = np.repeat(start - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    unit_tenant = np.repeat(np.arange(units.num_tenants), lengths)
    time_s = np.concatenate([units.time_s[index], requests.time_s[request_range]])
    order = np.argsort(time_s, kind="stable")  # one sorted run per tenant: a merge
    column_of = np.zeros(units.num_tenants, dtype=np.int16 if columns.size < 2**15 else np.int64)
    column_of[columns] = np.arange(columns.size)  # small ints: stable argsort is a radix sort
    tenant = np.concatenate([unit_tenant, requests.tenant[request_range]])
    service = np.concatenate([units.num_tokens[index] * out_service[unit_tenant],
                              requests.service[request_range]])
    backlog = np.concatenate([np.zeros(index.size), requests.backlog[request_range]])
    return EventStream(time_s[order], column_of[tenant[order]], service[order], backlog[order])
