"""Per-request records -> run summaries (latency, throughput, SLO, fairness) and reports."""

from __future__ import annotations

from shunter.metrics.fairness import FairnessSummary
from shunter.metrics.record import RequestRecord
from shunter.metrics.stats import LatencyStats, RejectionGroup
from shunter.metrics.summary import Summary, TenantSummary, summarize

__all__ = [
    "FairnessSummary",
    "LatencyStats",
    "RejectionGroup",
    "RequestRecord",
    "Summary",
    "TenantSummary",
    "summarize",
]
