"""One run's RequestRecords -> one Summary, with the same definitions in sim, engine and gateway.

Definitions (vLLM benchmark_serving where it has one):

- Latencies are over *completed* requests (finish reason stop or length; each defined once,
  in `shunter.metrics.latency`):
  TTFT = first token - arrival; E2E = finish - arrival; queue = first_scheduled - arrival;
  TPOT = (last token - first token) / (output tokens - 1), only with >= 2 output tokens
  (= (E2E - TTFT) / (out - 1) when the last token ends the request); ITL pools every gap
  between consecutive tokens of every completed request. Each is {mean, p50, p90, p99}.
- duration_s = last end (finish, or last token if no finish) - first arrival, over all
  records, unless the caller passes `duration_s`. Throughputs count completed requests:
  output tokens / duration, requests / duration, prompt tokens / duration.
- SLO attainment (DistServe): a completed request attains when TTFT <= its TTFT SLO and
  TPOT <= its TPOT SLO, each checked only when set (a one-token output has no TPOT and passes
  that check). A record's own SLO wins; the run-wide `ttft_slo_s`/`tpot_slo_s` fill in where a
  record has none. Requests with no SLO at all attain when completed; rejected, aborted and
  unfinished requests never attain. slo_attainment = attaining / all submitted;
  goodput_req_s = attaining / duration. With no SLO anywhere (no run-wide SLO and none on any
  record) both are None: nothing was asked, so nothing was attained or missed.
- rejections: rejected requests grouped by reason (the record's `error`), each with its count
  and the shortest and longest prompt it refused.
- prefix_hit_rate = cached prompt tokens / prompt tokens, over completed requests.
- Fairness and service: see `shunter.metrics.fairness`.

"Nothing to measure" is None (JSON null), never NaN and never a fake 0: latency stats of an
empty set, rates when duration is 0, ratios with a zero denominator. Counts are ints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from shunter.errors import ConfigError
from shunter.metrics import latency
from shunter.metrics.columns import RecordColumns, to_columns
from shunter.metrics.fairness import FairnessSummary, summarize_fairness, tenant_service
from shunter.metrics.itl import GapCounts, itl_gaps
from shunter.metrics.record import RequestRecord
from shunter.metrics.stats import LatencyStats, RejectionGroup, safe_ratio

__all__ = ["Summary", "TenantSummary", "summarize", "summarize_columns"]


@dataclass(frozen=True, slots=True)
class TenantSummary:
    """One tenant's share: its requests, the service it got (w_in = 1, w_out = 2), latencies."""

    num_requests: int
    service: int
    ttft_s: LatencyStats
    e2e_s: LatencyStats

    def to_dict(self) -> dict[str, Any]:
        return {"num_requests": self.num_requests, "service": self.service,
                "ttft_s": self.ttft_s.to_dict(), "e2e_s": self.e2e_s.to_dict()}


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """Every run-level metric; `to_dict()` is the JSON object the CLI writes (module docstring)."""

    num_requests: int
    num_completed: int
    num_rejected: int
    num_aborted: int
    num_unfinished: int
    rejections: Mapping[str, RejectionGroup]  # by reason (module docstring)
    duration_s: float
    num_output_tokens: int
    throughput_tok_s: float | None
    throughput_req_s: float | None
    throughput_input_tok_s: float | None
    ttft_s: LatencyStats
    tpot_s: LatencyStats
    itl_s: LatencyStats
    e2e_s: LatencyStats
    queue_s: LatencyStats
    slo_attainment: float | None
    goodput_req_s: float | None
    num_preemptions: int
    prefix_hit_rate: float | None
    fairness: FairnessSummary
    tenants: Mapping[str, TenantSummary]

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of JSON-safe values (no NaN, no infinities, no objects)."""
        out: dict[str, Any] = {}
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if isinstance(value, LatencyStats | FairnessSummary):
                value = value.to_dict()
            elif name == "tenants":
                value = {tenant: t.to_dict() for tenant, t in value.items()}
            elif name == "rejections":
                value = {reason: group.to_dict() for reason, group in value.items()}
            out[name] = value
        return out


def _check_positive(name: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or not (value >= 0 if allow_zero else value > 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound} seconds, got {value}")


def _slo_attained(cols: RecordColumns, ttft_s: np.ndarray, tpot_s: np.ndarray,
                  ttft_slo_s: float | None, tpot_slo_s: float | None) -> np.ndarray:
    """Per-request DistServe attainment; NaN SLO means 'not set', NaN TPOT means 'no TPOT'."""
    default_ttft = np.nan if ttft_slo_s is None else ttft_slo_s
    default_tpot = np.nan if tpot_slo_s is None else tpot_slo_s
    ttft_slo = np.where(np.isnan(cols.ttft_slo_s), default_ttft, cols.ttft_slo_s)
    tpot_slo = np.where(np.isnan(cols.tpot_slo_s), default_tpot, cols.tpot_slo_s)
    ttft_ok = np.isnan(ttft_slo) | (ttft_s <= ttft_slo)  # NaN TTFT with an SLO fails
    tpot_ok = np.isnan(tpot_slo) | np.isnan(tpot_s) | (tpot_s <= tpot_slo)
    return cols.is_completed & ttft_ok & tpot_ok


def _tenant_summaries(cols: RecordColumns, ttft_s: np.ndarray,
                      e2e_s: np.ndarray) -> dict[str, TenantSummary]:
    service = tenant_service(cols)
    num_requests = np.bincount(cols.tenant_index, minlength=cols.num_tenants)
    done = cols.is_completed
    order = np.argsort(cols.tenant_index[done], kind="stable")
    bounds = np.cumsum(np.bincount(cols.tenant_index[done], minlength=cols.num_tenants))[:-1]
    ttft_groups = np.split(ttft_s[done][order], bounds)
    e2e_groups = np.split(e2e_s[done][order], bounds)
    return {
        name: TenantSummary(
            num_requests=int(num_requests[i]),
            service=int(round(service[i])),
            ttft_s=LatencyStats.of(ttft_groups[i]),
            e2e_s=LatencyStats.of(e2e_groups[i]),
        )
        for i, name in enumerate(cols.tenant_names)
    }


def summarize(records: Iterable[RequestRecord], *, duration_s: float | None = None,
              ttft_slo_s: float | None = None, tpot_slo_s: float | None = None,
              tenant_weights: Mapping[str, float] | None = None) -> Summary:
    """Summarise one run. `duration_s` overrides the measured span; the SLOs are run-wide
    defaults for records without their own; `tenant_weights` normalise service for fairness."""
    cols = to_columns(records)
    return summarize_columns(cols, GapCounts.of(itl_gaps(cols)), duration_s=duration_s,
                             ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s,
                             tenant_weights=tenant_weights)


def summarize_columns(cols: RecordColumns, gaps: GapCounts, *, duration_s: float | None = None,
                      ttft_slo_s: float | None = None, tpot_slo_s: float | None = None,
                      tenant_weights: Mapping[str, float] | None = None) -> Summary:
    """`summarize` of records given as their columns and their pooled inter-token gaps (what a
    streamed run keeps: `sim.stream.ColumnSink`)."""
    _check_positive("duration_s", duration_s, allow_zero=True)
    _check_positive("ttft_slo_s", ttft_slo_s)
    _check_positive("tpot_slo_s", tpot_slo_s)
    first_token_s, last_token_s = cols.first_token_s, cols.last_token_s
    duration = (latency.run_duration_s(cols.arrival_s, cols.finish_s, last_token_s)
                if duration_s is None else float(duration_s))
    done = cols.is_completed
    ttft_s = latency.ttft_s(cols.arrival_s, first_token_s)
    tpot_s = latency.tpot_s(first_token_s, last_token_s, cols.num_output_tokens)
    e2e_s = latency.e2e_s(cols.arrival_s, cols.finish_s)
    num_output_tokens = int(cols.num_output_tokens[done].sum())
    num_prompt_tokens = int(cols.num_prompt_tokens[done].sum())
    num_attained = int(_slo_attained(cols, ttft_s, tpot_s, ttft_slo_s, tpot_slo_s).sum())
    has_slo = (ttft_slo_s is not None or tpot_slo_s is not None
               or not np.isnan(cols.ttft_slo_s).all() or not np.isnan(cols.tpot_slo_s).all())
    return Summary(
        num_requests=cols.num_requests,
        num_completed=int(done.sum()),
        num_rejected=int(cols.is_rejected.sum()),
        num_aborted=int(cols.is_aborted.sum()),
        num_unfinished=int((~(done | cols.is_rejected | cols.is_aborted)).sum()),
        rejections=cols.rejections,
        duration_s=duration,
        num_output_tokens=num_output_tokens,
        throughput_tok_s=safe_ratio(num_output_tokens, duration),
        throughput_req_s=safe_ratio(int(done.sum()), duration),
        throughput_input_tok_s=safe_ratio(num_prompt_tokens, duration),
        ttft_s=LatencyStats.of(ttft_s[done]),
        tpot_s=LatencyStats.of(tpot_s[done]),
        itl_s=gaps.stats(),
        e2e_s=LatencyStats.of(e2e_s[done]),
        queue_s=LatencyStats.of(latency.queue_s(cols.arrival_s, cols.first_scheduled_s)[done]),
        slo_attainment=safe_ratio(num_attained, cols.num_requests) if has_slo else None,
        goodput_req_s=safe_ratio(num_attained, duration) if has_slo else None,
        num_preemptions=int(cols.num_preemptions.sum()),
        prefix_hit_rate=safe_ratio(int(cols.num_cached_tokens[done].sum()), num_prompt_tokens),
        fairness=summarize_fairness(cols, tenant_weights),
        tenants=_tenant_summaries(cols, ttft_s, e2e_s),
    )
