"""The max service gap between backlogged tenants, computed exactly in one sweep.

Service follows VTC (Sheng et al., "Fairness in Serving Large Language Models", OSDI'24) with
w_in = 1 and w_out = 2: a request adds `num_prompt_tokens` when its first token arrives (the
prompt has then been served) and 2 per output token at that token's time, divided by its
tenant's weight. Tokens a request delivered before it was aborted count.

Definition:

    S_i(t) = service credited to tenant i at times <= t (cumulative since the run began)
    B(t)   = tenants with at least one request r such that arrival_r <= t < end_r
    gap(t) = max_{i in B(t)} S_i(t) - min_{i in B(t)} S_i(t)      (0 when |B(t)| < 2)
    max_service_gap = max over every event time t of gap(t)

end_r is the record's `finish_s`; without one, a rejected or aborted request ends at its last
token (or at its arrival: never backlogged) and an unfinished one never ends. Everything is a
right-continuous step function, so the maximum over event times is the supremum: exact.

Caveat of "since the run began": a tenant that first arrives late starts far behind the
others and the gap reports that distance, which no policy could avoid. Compare policies on
the same workload, where this offset is the same for all of them.

Algorithm (O(E log E) for E events, no tenant-count factor on tokens). Between two times at
which some request arrives or ends ("epochs") the backlogged set B is fixed and every S_i
only grows, so M(t) = max_B S(t) is a running maximum of the values tenants reach, and
max_t gap(t) = max over tenants j in B and over each stretch where S_j stays constant of
M(end of stretch) - S_j. The sweep evaluates exactly those candidates, in chunks of events;
only per-epoch state (epochs x tenants present) is dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shunter.metrics.columns import RecordColumns

__all__ = [
    "MAX_GAP_CELLS",
    "SERVICE_WEIGHT_INPUT",
    "SERVICE_WEIGHT_OUTPUT",
    "max_service_gap",
]

SERVICE_WEIGHT_INPUT = 1  # w_in: service per prompt token
SERVICE_WEIGHT_OUTPUT = 2  # w_out: service per output token
MAX_GAP_CELLS = 1 << 22  # cells of the dense per-epoch state of one chunk
GAP_CHUNK_EVENTS = 1 << 21  # events per stream and chunk
MIN_GAP_CHUNK_EVENTS = 64


@dataclass(frozen=True, slots=True)
class _Stream:
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


def _token_stream(cols: RecordColumns, out_service: np.ndarray) -> _Stream:
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
        return _Stream(np.empty(0), np.empty(0, dtype=np.int32), np.empty(0), np.empty(0))
    time_s = np.concatenate(times)
    order = np.argsort(time_s, kind="stable")  # one sorted run per tenant: a merge
    tenant = np.concatenate(tenants)[order]
    service = np.concatenate(counts)[order] * out_service[tenant]
    return _Stream(time_s[order], tenant, service, np.zeros(order.size))


def _backlog_end_s(cols: RecordColumns) -> np.ndarray:
    """finish_s, else last token (or arrival) if rejected/aborted, else +inf (unfinished)."""
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
    tenant = cols.tenant_index.astype(np.int32)
    prompt = SERVICE_WEIGHT_INPUT * cols.num_prompt_tokens[has_first] / weights[tenant[has_first]]
    num_first, num_enters, num_leaves = (int(m.sum()) for m in (has_first, enters, leaves))
    time_s = np.concatenate([first_token_s[has_first], cols.arrival_s[enters], end_s[leaves]])
    order = np.argsort(time_s, kind="stable")
    event_tenant = np.concatenate([tenant[has_first], tenant[enters], tenant[leaves]])
    service = np.concatenate([prompt, np.zeros(num_enters + num_leaves)])
    backlog = np.concatenate([np.zeros(num_first), np.ones(num_enters), -np.ones(num_leaves)])
    return _Stream(time_s[order], event_tenant[order], service[order], backlog[order])


def _segmented_cumsum(values: np.ndarray, is_first: np.ndarray) -> np.ndarray:
    """Inclusive running sum that restarts wherever `is_first` is True (is_first[0] is)."""
    running = np.cumsum(values)
    first = np.flatnonzero(is_first)
    return running - np.repeat(running[first] - values[first], np.diff(first, append=values.size))


def _segmented_cummax(values: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Running maximum restarting where `segment` (non-decreasing) changes. Complex numbers
    compare lexicographically in numpy, so (segment, value) pairs accumulate exactly."""
    pairs = np.empty(values.size, dtype=np.complex128)
    pairs.real = segment
    pairs.imag = values
    return np.maximum.accumulate(pairs).imag


def _merge(parts: list[tuple[_Stream, slice]], columns: np.ndarray,
           num_tenants: int) -> _Stream:
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
    return _Stream(*merged)


def _epoch_starts(ev: _Stream, group: np.ndarray, num_groups: int,
                  count0: np.ndarray) -> np.ndarray:
    """Time groups at which the backlogged set changes (a tenant's count crosses zero)."""
    starts = np.zeros(num_groups, dtype=bool)
    starts[0] = True
    at = np.flatnonzero(ev.backlog)
    if at.size == 0:
        return starts
    by_tenant = at[np.argsort(ev.tenant[at], kind="stable")]
    tenant, grp, delta = ev.tenant[by_tenant], group[by_tenant], ev.backlog[by_tenant]
    first_of_tenant = np.ones(tenant.size, dtype=bool)
    first_of_tenant[1:] = tenant[1:] != tenant[:-1]
    after = count0[tenant] + _segmented_cumsum(delta, first_of_tenant)
    seg_first = first_of_tenant.copy()
    seg_first[1:] |= grp[1:] != grp[:-1]
    seg_last = np.append(seg_first[1:], True)
    was_in = (after - delta)[seg_first] > 0.5
    flips = was_in != (after[seg_last] > 0.5)
    starts[grp[seg_first][flips]] = True
    return starts


def _chunk_gap(ev: _Stream, num_c: int, served0: np.ndarray, count0: np.ndarray) -> float:
    """Max gap(t) over one chunk's event times, given each column's service and backlog
    count before it. The chunk's first time starts an epoch, as does every change of B."""
    n = ev.time_s.size
    is_new_time = np.ones(n, dtype=bool)
    is_new_time[1:] = ev.time_s[1:] != ev.time_s[:-1]
    group = np.cumsum(is_new_time) - 1
    num_groups = int(group[-1]) + 1
    starts_epoch = _epoch_starts(ev, group, num_groups, count0)
    epoch_first = np.flatnonzero(starts_epoch)
    epoch_last = np.append(epoch_first[1:] - 1, num_groups - 1)
    epoch_of_group = np.cumsum(starts_epoch) - 1
    num_e = epoch_first.size
    cell = epoch_of_group[group] * num_c + ev.tenant
    # Dense per-epoch state: service before the epoch, membership of B during it.
    credit = np.bincount(cell, weights=ev.service, minlength=num_e * num_c).reshape(num_e, num_c)
    served_before = served0 + np.cumsum(credit, axis=0) - credit
    at = np.flatnonzero(ev.backlog)  # few: two per request
    counts = np.bincount(cell[at], weights=ev.backlog[at], minlength=num_e * num_c)
    member = (count0 + np.cumsum(counts.reshape(num_e, num_c), axis=0)) > 0.5
    # Per event, grouped by tenant (stable: time order kept within a tenant).
    by_tenant = np.argsort(ev.tenant, kind="stable")
    tenant, grp, cell_t = ev.tenant[by_tenant], group[by_tenant], cell[by_tenant]
    first_of_tenant = np.ones(n, dtype=bool)
    first_of_tenant[1:] = tenant[1:] != tenant[:-1]
    served_after = served0[tenant] + _segmented_cumsum(ev.service[by_tenant], first_of_tenant)
    in_b = member.ravel()[cell_t]
    # M per time group: max over B of service, a running max restarted every epoch.
    values = np.full(n, -1.0)  # service is >= 0, so -1 never wins
    values[by_tenant] = np.where(in_b, served_after, -1.0)
    m_group = np.maximum.reduceat(values, np.flatnonzero(is_new_time))
    m_start = np.where(member, served_before, -1.0).max(axis=1)
    m_group[epoch_first] = np.maximum(m_group[epoch_first], m_start)
    m_group = _segmented_cummax(m_group, epoch_of_group)
    # Candidates: each value a member holds, against M where it stops holding.
    next_group = np.append(grp[1:], num_groups)
    next_group[np.append(first_of_tenant[1:], True)] = num_groups
    epoch_t = cell_t // num_c
    run_end = np.minimum(next_group - 1, epoch_last[epoch_t])
    ok = in_b & (run_end >= grp)
    best = float((m_group[run_end[ok]] - served_after[ok]).max()) if ok.any() else 0.0
    # ... a member's value at the epoch start, until its first event in the epoch ...
    first = first_of_tenant.copy()
    first[1:] |= epoch_t[1:] != epoch_t[:-1]
    first = np.flatnonzero(first)
    idle = member.copy()
    idle.ravel()[cell_t[first]] = False
    first = first[in_b[first] & (grp[first] > epoch_first[epoch_t[first]])]
    if first.size:
        held = served_before.ravel()[cell_t[first]]
        best = max(best, float((m_group[grp[first] - 1] - held).max()))
    # ... and the value of a member without events in the epoch, until its end.
    low = np.where(idle, served_before, np.inf).min(axis=1)
    has_idle = np.isfinite(low)
    if has_idle.any():
        best = max(best, float((m_group[epoch_last[has_idle]] - low[has_idle]).max()))
    return best


def _plan_chunk(streams: list[_Stream], starts: list[int], count: np.ndarray
                ) -> tuple[list[tuple[_Stream, slice]], np.ndarray]:
    """The next chunk: whole event times, with a dense state of about MAX_GAP_CELLS at most."""
    num_events = GAP_CHUNK_EVENTS
    while True:
        end_s = np.inf
        for stream, start in zip(streams, starts, strict=True):
            if start + num_events <= stream.time_s.size:
                end_s = min(end_s, float(stream.time_s[start + num_events - 1]))
        parts = [(s, slice(a, int(np.searchsorted(s.time_s, end_s, side="right"))))
                 for s, a in zip(streams, starts, strict=True)]
        present = count > 0.5
        for stream, sl in parts:
            present |= np.bincount(stream.tenant[sl], minlength=count.size) > 0
        columns = np.flatnonzero(present)
        num_epochs = 1 + sum(int(np.count_nonzero(s.backlog[sl])) for s, sl in parts)
        if num_epochs * columns.size <= MAX_GAP_CELLS or num_events <= MIN_GAP_CHUNK_EVENTS:
            return parts, columns
        num_events = max(MIN_GAP_CHUNK_EVENTS, num_events // 4)


def max_service_gap(cols: RecordColumns, weights: np.ndarray | None = None) -> float | None:
    """The max service gap between backlogged tenants (module docstring); None without records.

    `weights` (per tenant, in `cols.tenant_names` order) divide each tenant's service.
    """
    if cols.num_requests == 0:
        return None
    weights = np.ones(cols.num_tenants) if weights is None else weights
    streams = [_token_stream(cols, SERVICE_WEIGHT_OUTPUT / weights), _request_stream(cols, weights)]
    served = np.zeros(cols.num_tenants)
    count = np.zeros(cols.num_tenants)
    starts = [0] * len(streams)
    best = 0.0
    while any(start < s.time_s.size for start, s in zip(starts, streams, strict=True)):
        parts, columns = _plan_chunk(streams, starts, count)
        ev = _merge(parts, columns, cols.num_tenants)
        if ev.time_s.size:
            best = max(best, _chunk_gap(ev, columns.size, served[columns], count[columns]))
            served[columns] += np.bincount(ev.tenant, weights=ev.service, minlength=columns.size)
            count[columns] += np.bincount(ev.tenant, weights=ev.backlog, minlength=columns.size)
        starts = [sl.stop for _, sl in parts]
    return best
