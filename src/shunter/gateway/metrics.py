"""Prometheus metrics of the gateway, in the text exposition format, written by hand.

Why not `prometheus_client`: its default registry is module-global mutable state (STYLE.md 3),
every observation takes a lock that an asyncio server never needs, and what we expose (a few
counters and histograms with one or two labels, plus gauges read at scrape time) is ~100 lines.
The format is Prometheus text 0.0.4: `# HELP`, `# TYPE`, cumulative `_bucket{le=...}` series
ending in `+Inf`, then `_sum` and `_count`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["Counter", "GatewayMetrics", "Gauge", "Histogram", "LATENCY_BUCKETS_S"]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0,
                     2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass(slots=True)
class Counter:
    name: str
    help: str
    label_names: tuple[str, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, labels: tuple[str, ...] = ()) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(self.label_names, k)} {v:g}" for k, v in self.values.items()]
        return lines


@dataclass(slots=True)
class Gauge:
    """A gauge read when scraped: `read()` yields (label values, value) pairs."""

    name: str
    help: str
    label_names: tuple[str, ...]
    read: Callable[[], Iterable[tuple[tuple[str, ...], float]]]

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        lines += [f"{self.name}{_labels(self.label_names, k)} {v:g}" for k, v in self.read()]
        return lines


@dataclass(slots=True)
class Histogram:
    name: str
    help: str
    label_names: tuple[str, ...] = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    # labels -> [count in bucket 0, ..., count over the last bound, sum]
    series: dict[tuple[str, ...], list[float]] = field(default_factory=dict)

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        row = self.series.get(labels)
        if row is None:
            row = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        row[bisect.bisect_left(self.buckets, value)] += 1
        row[-1] += value

    def count(self, labels: tuple[str, ...] = ()) -> int:
        row = self.series.get(labels)
        return 0 if row is None else int(sum(row[:-1]))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, row in self.series.items():
            total = 0.0
            for bound, num in zip((*self.buckets, float("inf")), row[:-1], strict=True):
                total += num
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                tags = _labels(self.label_names, labels, 'le="' + le + '"')
                lines.append(f"{self.name}_bucket{tags} {total:g}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {row[-1]:.6g}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {total:g}")
        return lines


@dataclass(slots=True)
class GatewayMetrics:
    """Everything /metrics shows. Per-replica gauges are added by the owner of the replicas."""

    ttft_s: Histogram = field(default_factory=lambda: Histogram(
        "shunter_time_to_first_token_seconds", "Time to first token seen by clients.", ("replica",)))
    itl_s: Histogram = field(default_factory=lambda: Histogram(
        "shunter_inter_token_latency_seconds", "Time between streamed chunks.", ("replica",)))
    e2e_s: Histogram = field(default_factory=lambda: Histogram(
        "shunter_e2e_request_latency_seconds", "Request latency, arrival to last byte.",
        ("replica",)))
    queue_s: Histogram = field(default_factory=lambda: Histogram(
        "shunter_queue_time_seconds", "Time spent in the gateway's fair queue.", ("tenant",)))
    requests: Counter = field(default_factory=lambda: Counter(
        "shunter_requests_total", "Finished requests by tenant and outcome.", ("tenant", "outcome")))
    routed: Counter = field(default_factory=lambda: Counter(
        "shunter_routing_decisions_total", "Requests dispatched to each replica (retries too).",
        ("replica",)))
    rejected: Counter = field(default_factory=lambda: Counter(
        "shunter_admission_rejections_total", "Requests refused by admission control.",
        ("tenant", "reason")))
    backend_errors: Counter = field(default_factory=lambda: Counter(
        "shunter_backend_errors_total", "Backend failures by replica and kind.", ("replica", "kind")))
    failovers: Counter = field(default_factory=lambda: Counter(
        "shunter_failovers_total", "Requests moved to another replica, before or after the "
        "first byte.", ("when",)))
    prompt_tokens: Counter = field(default_factory=lambda: Counter(
        "shunter_prompt_tokens_total", "Prompt tokens reported by backends.", ("tenant",)))
    completion_tokens: Counter = field(default_factory=lambda: Counter(
        "shunter_generation_tokens_total", "Output tokens reported by backends.", ("tenant",)))
    responses: Counter = field(default_factory=lambda: Counter(
        "shunter_http_responses_total", "Every answer, by HTTP status (4xx and malformed "
        "requests included).", ("code",)))
    # rendered under vLLM's names by `vllm_metrics.VllmSeries` (an `extra` renderer)
    prefix_queries: Counter = field(default_factory=lambda: Counter(
        "vllm:prefix_cache_queries_total", "Prompt tokens looked up in a prefix cache."))
    prefix_hits: Counter = field(default_factory=lambda: Counter(
        "vllm:prefix_cache_hits_total", "Prompt tokens served from a prefix cache."))
    successes: Counter = field(default_factory=lambda: Counter(
        "vllm:request_success_total", "Finished requests by finish reason.",
        ("finished_reason",)))
    gauges: list[Gauge] = field(default_factory=list)
    extra: list[Callable[[], list[str]]] = field(default_factory=list)  # more series, rendered

    def count_response(self, status: int) -> None:
        """An answer started with this HTTP status."""
        self.responses.inc((str(status),))

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in (self.ttft_s, self.itl_s, self.e2e_s, self.queue_s, self.requests,
                       self.routed, self.rejected, self.backend_errors, self.failovers,
                       self.prompt_tokens, self.completion_tokens, self.responses,
                       *self.gauges):
            lines += metric.render()
        for render in self.extra:
            lines += render()
        return ("\n".join(lines) + "\n").encode()
