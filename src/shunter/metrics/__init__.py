"""Per-request records -> run summaries (latency, throughput, SLO, fairness) and reports."""

from __future__ import annotations

from shunter.metrics.fairness import FairnessSummary
from shunter.metrics.record import RequestRecord
from shunter.metrics.stats import LatencyStats
from shunter.metrics.summary import Summary, TenantSummary, summarize

__all__ = [
    "FairnessSummary",
    "LatencyStats",
    "RequestRecord",
    "Summary",
    "TenantSummary",
    "summarize",
]
