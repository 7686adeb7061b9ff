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

Algorithm. Between two times at which B changes ("epochs") every S_i only grows, so
M(t) = max_B S(t) is a running maximum of the values members reach, and the largest gap in
the epoch is the largest M(end of stretch) - S_j over members j and the stretches in which
S_j stays constant. The sweep evaluates exactly those candidates, in chunks of events.
Cost: sorting the E token times (tokens sharing a time and tenant, as a simulator's batch
does, become one event), O(1) vectorised passes per event, plus a dense (epochs x tenants
present) state per chunk, where epochs change only when some tenant's backlog starts or
ends. Never quadratic in requests or tokens.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from shunter.metrics.columns import RecordColumns
from shunter.metrics.service_events import (
    SERVICE_WEIGHT_OUTPUT,
    EventStream,
    TokenUnits,
    chunk_events,
    request_stream,
    token_units,
)

__all__ = ["MAX_GAP_CELLS", "max_service_gap"]

MAX_GAP_CELLS = 1 << 22  # cells of the dense per-epoch state of one chunk
GAP_CHUNK_EVENTS = 1 << 21  # about this many events per chunk
SAMPLES_PER_CHUNK = 64  # chunk bounds are read off a sample with this many times per chunk


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


def _epoch_starts(ev: EventStream, group: np.ndarray, num_groups: int,
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


@dataclass(frozen=True, slots=True)
class _Epochs:
    """A chunk's distinct event times ("groups") and the epochs (runs of groups with one B)."""

    group: np.ndarray  # per event: its time group
    group_first_event: np.ndarray  # per group: its first event
    epoch_of_group: np.ndarray
    first_group: np.ndarray  # per epoch
    last_group: np.ndarray  # per epoch

    @property
    def num_groups(self) -> int:
        return int(self.epoch_of_group.size)


def _epochs(ev: EventStream, count0: np.ndarray) -> _Epochs:
    is_new_time = np.ones(ev.time_s.size, dtype=bool)
    is_new_time[1:] = ev.time_s[1:] != ev.time_s[:-1]
    group = np.cumsum(is_new_time) - 1
    num_groups = int(group[-1]) + 1
    starts = _epoch_starts(ev, group, num_groups, count0)
    first = np.flatnonzero(starts)
    return _Epochs(group=group, group_first_event=np.flatnonzero(is_new_time),
                   epoch_of_group=np.cumsum(starts) - 1, first_group=first,
                   last_group=np.append(first[1:] - 1, num_groups - 1))


def _epoch_state(ev: EventStream, cell: np.ndarray, shape: tuple[int, int],
                 served0: np.ndarray, count0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense (epochs x columns): service before each epoch and membership of B during it."""
    size = shape[0] * shape[1]
    credit = np.bincount(cell, weights=ev.service, minlength=size).reshape(shape)
    served_before = served0 + np.cumsum(credit, axis=0) - credit
    at = np.flatnonzero(ev.backlog)  # few: two per request
    counts = np.bincount(cell[at], weights=ev.backlog[at], minlength=size).reshape(shape)
    return served_before, (count0 + np.cumsum(counts, axis=0)) > 0.5


def _chunk_gap(ev: EventStream, num_c: int, served0: np.ndarray, count0: np.ndarray) -> float:
    """Max gap(t) over one chunk's event times, given each column's service and backlog
    count before it. The chunk's first time starts an epoch, as does every change of B."""
    n = ev.time_s.size
    ep = _epochs(ev, count0)
    cell = ep.epoch_of_group[ep.group] * num_c + ev.tenant
    served_before, member = _epoch_state(ev, cell, (ep.first_group.size, num_c), served0, count0)
    # Per event, grouped by tenant (stable: time order kept within a tenant).
    by_tenant = np.argsort(ev.tenant, kind="stable")
    tenant, grp, cell_t = ev.tenant[by_tenant], ep.group[by_tenant], cell[by_tenant]
    first_of_tenant = np.ones(n, dtype=bool)
    first_of_tenant[1:] = tenant[1:] != tenant[:-1]
    served_after = served0[tenant] + _segmented_cumsum(ev.service[by_tenant], first_of_tenant)
    in_b = member.ravel()[cell_t]
    # M per time group: max over B of service, a running max restarted every epoch.
    values = np.full(n, -1.0)  # service is >= 0, so -1 never wins
    values[by_tenant] = np.where(in_b, served_after, -1.0)
    m_group = np.maximum.reduceat(values, ep.group_first_event)
    m_start = np.where(member, served_before, -1.0).max(axis=1)
    m_group[ep.first_group] = np.maximum(m_group[ep.first_group], m_start)
    m_group = _segmented_cummax(m_group, ep.epoch_of_group)
    # Candidates: each value a member holds, against M where it stops holding ...
    next_group = np.append(grp[1:], ep.num_groups)
    next_group[np.append(first_of_tenant[1:], True)] = ep.num_groups
    epoch_t = cell_t // num_c
    run_end = np.minimum(next_group - 1, ep.last_group[epoch_t])
    ok = in_b & (run_end >= grp)
    best = float((m_group[run_end[ok]] - served_after[ok]).max()) if ok.any() else 0.0
    # ... a member's value at the epoch start, until its first event in the epoch ...
    first = first_of_tenant.copy()
    first[1:] |= epoch_t[1:] != epoch_t[:-1]
    first = np.flatnonzero(first)
    idle = member.copy()
    idle.ravel()[cell_t[first]] = False
    first = first[in_b[first] & (grp[first] > ep.first_group[epoch_t[first]])]
    if first.size:
        held = served_before.ravel()[cell_t[first]]
        best = max(best, float((m_group[grp[first] - 1] - held).max()))
    # ... and the value of a member without events in the epoch, until the epoch ends.
    low = np.where(idle, served_before, np.inf).min(axis=1)
    has_idle = np.isfinite(low)
    if has_idle.any():
        best = max(best, float((m_group[ep.last_group[has_idle]] - low[has_idle]).max()))
    return best


def _chunk_bounds(units: TokenUnits, requests: EventStream) -> np.ndarray:
    """Chunk end times, about GAP_CHUNK_EVENTS events apart (read off a sample); last +inf."""
    stride = max(1, GAP_CHUNK_EVENTS // SAMPLES_PER_CHUNK)
    per_chunk = max(1, GAP_CHUNK_EVENTS // stride)
    sample = np.sort(np.concatenate([units.time_s[::stride], requests.time_s[::stride]]))
    return np.append(np.unique(sample[per_chunk - 1::per_chunk]), np.inf)


def _tenant_stops(units: TokenUnits, bounds: np.ndarray) -> np.ndarray:
    """(chunks x tenants): where each tenant's units after each chunk end begin."""
    stops = np.empty((bounds.size, units.num_tenants), dtype=np.int64)
    for tenant in range(units.num_tenants):
        start, stop = units.tenant_offsets[tenant], units.tenant_offsets[tenant + 1]
        stops[:, tenant] = start + np.searchsorted(units.time_s[start:stop], bounds, side="right")
    return stops


def _pieces(ev: EventStream, num_columns: int) -> list[EventStream]:
    """`ev` cut at time boundaries so each piece's dense epoch state stays near MAX_GAP_CELLS."""
    max_backlog_events = max(1, MAX_GAP_CELLS // max(num_columns, 1) - 1)
    at = np.flatnonzero(ev.backlog)
    if at.size <= max_backlog_events:
        return [ev]
    cuts = np.searchsorted(ev.time_s, ev.time_s[at[max_backlog_events::max_backlog_events]])
    edges = [0, *np.unique(cuts[cuts > 0]).tolist(), ev.time_s.size]
    return [EventStream(ev.time_s[a:b], ev.tenant[a:b], ev.service[a:b], ev.backlog[a:b])
            for a, b in itertools.pairwise(edges)]


def max_service_gap(cols: RecordColumns, weights: np.ndarray | None = None) -> float | None:
    """The max service gap between backlogged tenants (module docstring); None without records.

    `weights` (per tenant, in `cols.tenant_names` order) divide each tenant's service.
    """
    if cols.num_requests == 0:
        return None
    if cols.num_tenants < 2:  # never two tenants backlogged at once
        return 0.0
    if not cols.has_token_times:
        raise ValueError("the max service gap between tenants needs every token's time: these "
                         "columns were joined without them (concat_columns)")
    weights = np.ones(cols.num_tenants) if weights is None else weights
    units, requests = token_units(cols), request_stream(cols, weights)
    bounds = _chunk_bounds(units, requests)
    unit_stops = _tenant_stops(units, bounds)
    request_stops = np.searchsorted(requests.time_s, bounds, side="right")
    served, count = np.zeros(cols.num_tenants), np.zeros(cols.num_tenants)
    unit_start, request_start, best = units.tenant_offsets[:-1], 0, 0.0
    for unit_stop, request_stop in zip(unit_stops, request_stops, strict=True):
        in_chunk = slice(request_start, int(request_stop))
        present = (count > 0.5) | (unit_stop > unit_start)
        present[requests.tenant[in_chunk]] = True
        columns = np.flatnonzero(present)
        ev = chunk_events(units, (unit_start, unit_stop), requests, in_chunk,
                          SERVICE_WEIGHT_OUTPUT / weights, columns)
        for piece in _pieces(ev, columns.size) if ev.time_s.size else []:
            best = max(best, _chunk_gap(piece, columns.size, served[columns], count[columns]))
            served[columns] += np.bincount(piece.tenant, weights=piece.service,
                                           minlength=columns.size)
            count[columns] += np.bincount(piece.tenant, weights=piece.backlog,
                                          minlength=columns.size)
        unit_start, request_start = unit_stop, int(request_stop)
    return best
