"""The engine and request quantities vLLM exposes, under vLLM's names and labels, so dashboards
built for vLLM read a Shunter gateway unchanged (`model_name` is the served model).

Rendered at scrape time from what the gateway keeps anyway, so the request path pays nothing
more: the latency histograms summed over replicas (`shunter_*_seconds`, labelled by replica,
and these, labelled by model), the token counters summed over tenants, and the backends'
reconciled load (the views its router sees):

    vllm:num_requests_running        requests running at the backends
    vllm:num_requests_waiting        waiting at the backends plus in the gateway's queue
    vllm:kv_cache_usage_perc         mean KV cache usage the backends report (0..1)
    vllm:num_preemptions_total       preemptions the backends report
    vllm:time_to_first_token_seconds, vllm:inter_token_latency_seconds,
    vllm:e2e_request_latency_seconds   as clients of the gateway see them
    vllm:prompt_tokens_total, vllm:generation_tokens_total
    vllm:prefix_cache_queries_total, vllm:prefix_cache_hits_total   prompt tokens, and those
                                     served from a backend's prefix cache (from usage)
    vllm:request_success_total       finished requests, by finished_reason
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shunter.gateway.metrics import GatewayMetrics, Histogram

__all__ = ["VllmSeries"]

LoadRead = Callable[[], Iterable[tuple[float, float, float, float]]]  # running, waiting, kv, preempt


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _summed(histogram: Histogram) -> list[float] | None:
    rows = list(histogram.series.values())
    if not rows:
        return None
    return [sum(values) for values in zip(*rows, strict=True)]


@dataclass(slots=True)
class VllmSeries:
    """vLLM-named series of one gateway (see the module docstring), over its metrics."""

    model_name: str
    metrics: GatewayMetrics
    read_load: LoadRead = field(default=lambda: ())
    read_queued: Callable[[], int] = field(default=lambda: 0)

    def render(self) -> list[str]:
        m = self.metrics
        label = f'model_name="{_escape(self.model_name)}"'
        lines: list[str] = []
        loads = list(self.read_load())
        running = sum(x[0] for x in loads)
        waiting = sum(x[1] for x in loads) + self.read_queued()
        kv = sum(x[2] for x in loads) / len(loads) if loads else 0.0
        preemptions = sum(x[3] for x in loads)
        for name, kind, help_, value in (
                ("vllm:num_requests_running", "gauge", "Requests running at the backends.",
                 running),
                ("vllm:num_requests_waiting", "gauge", "Requests waiting at the backends and "
                 "in the gateway's queue.", waiting),
                ("vllm:kv_cache_usage_perc", "gauge", "Mean KV cache usage of the backends "
                 "(1 = full).", kv),
                ("vllm:num_preemptions_total", "counter", "Preemptions the backends report.",
                 preemptions),
                ("vllm:prompt_tokens_total", "counter", "Prompt tokens.",
                 sum(m.prompt_tokens.values.values())),
                ("vllm:generation_tokens_total", "counter", "Generated tokens.",
                 sum(m.completion_tokens.values.values()))):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}",
                      f"{name}{{{label}}} {value:g}"]
        for name, help_, histogram in (
                ("vllm:time_to_first_token_seconds", "Time to first token.", m.ttft_s),
                ("vllm:inter_token_latency_seconds", "Time between tokens.", m.itl_s),
                ("vllm:e2e_request_latency_seconds", "Request latency.", m.e2e_s)):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
            row = _summed(histogram) or [0.0] * (len(histogram.buckets) + 2)
            total = 0.0
            for bound, num in zip((*histogram.buckets, float("inf")), row[:-1], strict=True):
                total += num
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'{name}_bucket{{{label},le="{le}"}} {total:g}')
            lines += [f"{name}_sum{{{label}}} {row[-1]:.6g}", f"{name}_count{{{label}}} {total:g}"]
        for counter in (m.prefix_queries, m.prefix_hits):
            lines += [f"# HELP {counter.name} {counter.help}", f"# TYPE {counter.name} counter",
                      f"{counter.name}{{{label}}} {counter.get():g}"]
        name = m.successes.name
        lines += [f"# HELP {name} {m.successes.help}", f"# TYPE {name} counter"]
        lines += [f'{name}{{{label},finished_reason="{_escape(reason)}"}} {v:g}'
                  for (reason,), v in m.successes.values.items()]
        return lines
