"""Load generation against any OpenAI-compatible endpoint (`shunter bench`), and step-time
probes of a live backend (`shunter profile`).

The bench replays a workload open loop (`runner`), timing every token on the client
(`client`), with prompts built to the trace's token counts (`prompt`); its records feed the
same `shunter.metrics.summarize` as the simulator's, and `report` writes the HTML report.
"""

from __future__ import annotations

from shunter.bench.client import EndpointConfig, api_root, request_body, send_request
from shunter.bench.probe import (
    ProbePlan,
    check_reachable,
    endpoint_limits,
    endpoint_model,
    probe_endpoint,
)
from shunter.bench.prompt import PROMPT_WORDS, prompt_text
from shunter.bench.runner import BenchRun, run_bench, run_bench_async
from shunter.bench.timeline import QueueSeries, queue_series, tenant_service_series

__all__ = [
    "PROMPT_WORDS",
    "BenchRun",
    "EndpointConfig",
    "ProbePlan",
    "QueueSeries",
    "api_root",
    "check_reachable",
    "endpoint_limits",
    "endpoint_model",
    "probe_endpoint",
    "prompt_text",
    "queue_series",
    "request_body",
    "run_bench",
    "run_bench_async",
    "send_request",
    "tenant_service_series",
]
