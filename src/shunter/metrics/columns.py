"""RequestRecords turned into numpy columns once, so every metric is a vectorised expression.

Per-request fields become arrays of length N; every output token time of every request is
concatenated into one array `token_times_s` with CSR-style `token_offsets` (request i owns
`token_times_s[token_offsets[i]:token_offsets[i + 1]]`). Missing values (`None` in a record)
become NaN *inside* the columns only; nothing derived from them reaches a report as NaN.

Tenants are numbered in sorted name order, so results never depend on record order.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from shunter.core.types import FinishReason
from shunter.metrics.record import COMPLETED_REASONS, RequestRecord
from shunter.metrics.stats import RejectionGroup

__all__ = ["RecordColumns", "UNSPECIFIED_REJECTION", "concat_columns", "to_columns"]

UNSPECIFIED_REJECTION = "unspecified"  # the rejection reason of a record whose `error` is None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordColumns:
    """Column view of N records (float64 times in seconds, NaN where a record has None)."""

    arrival_s: np.ndarray
    first_scheduled_s: np.ndarray
    finish_s: np.ndarray
    num_prompt_tokens: np.ndarray  # int64
    num_cached_tokens: np.ndarray  # int64
    num_preemptions: np.ndarray  # int64
    num_output_tokens: np.ndarray  # int64
    first_token_s: np.ndarray  # time of each request's first token; NaN without one
    last_token_s: np.ndarray  # ... and of its last
    # every token's time, request i's at token_times_s[token_offsets[i]:token_offsets[i + 1]];
    # both empty when the columns were joined without them (`concat_columns`)
    token_offsets: np.ndarray  # int64, length N + 1
    token_times_s: np.ndarray  # float64, length token_offsets[-1]
    is_completed: np.ndarray  # bool
    is_rejected: np.ndarray  # bool
    is_aborted: np.ndarray  # bool
    tenant_index: np.ndarray  # int64 index into tenant_names
    tenant_names: tuple[str, ...]  # sorted
    ttft_slo_s: np.ndarray  # the record's own SLO, NaN when it has none
    tpot_slo_s: np.ndarray
    rejections: dict[str, RejectionGroup]  # by rejection reason, sorted by reason

    @property
    def num_requests(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def num_tenants(self) -> int:
        return len(self.tenant_names)

    @property
    def has_token_times(self) -> bool:
        return self.token_offsets.size == self.num_requests + 1


def _token_at(num_output_tokens: np.ndarray, token_times_s: np.ndarray,
              positions: np.ndarray) -> np.ndarray:
    out = np.full(num_output_tokens.shape[0], np.nan)
    has_tokens = num_output_tokens > 0
    out[has_tokens] = token_times_s[positions[has_tokens]]
    return out


def _float_column(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _tenant_column(records: list[RequestRecord]) -> tuple[np.ndarray, tuple[str, ...]]:
    first_seen: dict[str, int] = {}
    seen_index = np.fromiter(
        (first_seen.setdefault(r.tenant, len(first_seen)) for r in records),
        dtype=np.int64, count=len(records),
    )
    names = tuple(sorted(first_seen))
    rank = np.empty(len(names), dtype=np.int64)
    for sorted_index, name in enumerate(names):
        rank[first_seen[name]] = sorted_index
    return rank[seen_index], names


def _token_column(records: list[RequestRecord], num_tokens: np.ndarray) -> np.ndarray:
    total = int(num_tokens.sum())
    if records and not isinstance(records[0].token_times_s, list):
        # Array-backed token times (array('d'), numpy): concatenating buffers beats iterating.
        parts = [np.asarray(r.token_times_s, dtype=np.float64) for r in records]
        return np.concatenate(parts) if parts else np.empty(0)
    chained = itertools.chain.from_iterable(r.token_times_s for r in records)
    return np.fromiter(chained, dtype=np.float64, count=total)


def _rejection_groups(records: list[RequestRecord]) -> dict[str, RejectionGroup]:
    """Rejected records by reason (their `error`), sorted: one group per reason, not one per
    prompt length (a reason names the limit, the group the range of prompts it refused)."""
    lengths: dict[str, list[int]] = defaultdict(list)
    for r in records:
        if r.finish_reason == FinishReason.REJECTED:
            lengths[r.error or UNSPECIFIED_REJECTION].append(r.num_prompt_tokens)
    return {reason: RejectionGroup(len(group), min(group), max(group))
            for reason, group in sorted(lengths.items())}


def to_columns(records: Iterable[RequestRecord], *, token_times: bool = True) -> RecordColumns:
    """Extract every field the metrics need from `records` in one pass per field. Without
    `token_times`, only each record's first and last token times are read (the token arrays
    stay empty: `has_token_times` is False)."""
    recs = records if isinstance(records, list) else list(records)
    n = len(recs)
    num_out = np.fromiter((len(r.token_times_s) for r in recs), dtype=np.int64, count=n)
    reasons = [r.finish_reason for r in recs]
    tenant_index, tenant_names = _tenant_column(recs)
    rejections = _rejection_groups(recs)
    if token_times:
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(num_out, out=offsets[1:])
        token_times_s = _token_column(recs, num_out)
        first_token_s = _token_at(num_out, token_times_s, offsets[:-1])
        last_token_s = _token_at(num_out, token_times_s, offsets[1:] - 1)
    else:
        offsets, token_times_s = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        first_token_s = _float_column([r.token_times_s[0] if len(r.token_times_s) else None
                                       for r in recs])
        last_token_s = _float_column([r.token_times_s[-1] if len(r.token_times_s) else None
                                      for r in recs])
    return RecordColumns(
        arrival_s=np.fromiter((r.arrival_s for r in recs), dtype=np.float64, count=n),
        first_scheduled_s=_float_column([r.first_scheduled_s for r in recs]),
        finish_s=_float_column([r.finish_s for r in recs]),
        num_prompt_tokens=np.fromiter((r.num_prompt_tokens for r in recs), np.int64, count=n),
        num_cached_tokens=np.fromiter((r.num_cached_tokens for r in recs), np.int64, count=n),
        num_preemptions=np.fromiter((r.num_preemptions for r in recs), np.int64, count=n),
        num_output_tokens=num_out,
        first_token_s=first_token_s,
        last_token_s=last_token_s,
        token_offsets=offsets,
        token_times_s=token_times_s,
        is_completed=np.fromiter((x in COMPLETED_REASONS for x in reasons), dtype=bool, count=n),
        is_rejected=np.fromiter((x == FinishReason.REJECTED for x in reasons), bool, count=n),
        is_aborted=np.fromiter((x == FinishReason.ABORT for x in reasons), dtype=bool, count=n),
        tenant_index=tenant_index,
        tenant_names=tenant_names,
        ttft_slo_s=_float_column([r.ttft_slo_s for r in recs]),
        tpot_slo_s=_float_column([r.tpot_slo_s for r in recs]),
        rejections=rejections,
    )


_PER_REQUEST = ("arrival_s", "first_scheduled_s", "finish_s", "num_prompt_tokens",
                "num_cached_tokens", "num_preemptions", "num_output_tokens", "first_token_s",
                "last_token_s", "is_completed", "is_rejected", "is_aborted", "ttft_slo_s",
                "tpot_slo_s")


def concat_columns(parts: list[RecordColumns], *, keep_token_times: bool) -> RecordColumns:
    """The columns of the records of `parts`, in order: `to_columns(a + b) ==
    concat_columns([to_columns(a), to_columns(b)], keep_token_times=True)` (a streamed run
    builds its columns a chunk of records at a time). Without `keep_token_times` the token
    arrays stay empty (`has_token_times` is False): 8 bytes a token less."""
    names = tuple(sorted({name for part in parts for name in part.tenant_names}))
    rank = {name: i for i, name in enumerate(names)}
    groups: dict[str, list[RejectionGroup]] = defaultdict(list)
    for part in parts:
        for reason, group in part.rejections.items():
            groups[reason].append(group)
    rejections = {reason: RejectionGroup(sum(g.num_requests for g in gs),
                                         min(g.min_prompt_tokens for g in gs),
                                         max(g.max_prompt_tokens for g in gs))
                  for reason, gs in sorted(groups.items())}
    columns = {name: (np.concatenate([getattr(p, name) for p in parts]) if parts
                      else getattr(to_columns([]), name)) for name in _PER_REQUEST}
    tenant_index = (np.concatenate([np.array([rank[t] for t in p.tenant_names],
                                             dtype=np.int64)[p.tenant_index] for p in parts])
                    if parts else np.empty(0, dtype=np.int64))
    if keep_token_times:
        offsets = np.zeros(sum(p.num_requests for p in parts) + 1, dtype=np.int64)
        np.cumsum(columns["num_output_tokens"], out=offsets[1:])
        times = (np.concatenate([p.token_times_s for p in parts]) if parts
                 else np.empty(0, dtype=np.float64))
    else:
        offsets, times = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    return RecordColumns(**columns, token_offsets=offsets, token_times_s=times,
                         tenant_index=tenant_index, tenant_names=names, rejections=rejections)
