"""Workloads: trace files and generators turned into `RequestSpec`s sorted by arrival.

- `load_workload` / `iter_workload` read any trace format in `TRACE_FORMATS`;
- `write_jsonl` writes the canonical JSONL (Mooncake-compatible) file they read back exactly;
- `generate(SyntheticWorkload(...), seed)` makes synthetic workloads (arrival processes, length
  distributions, tenants, request classes with priorities and SLOs, shared system prompts).
"""

from __future__ import annotations

from shunter.workload.arrival import ARRIVAL_PROCESSES, arrival_times, iter_arrival_times
from shunter.workload.generators import (
    RequestClass,
    SharedPrefix,
    SyntheticWorkload,
    generate,
    merge_workloads,
)
from shunter.workload.jsonl import MOONCAKE_HASH_BLOCK_SIZE, iter_jsonl, spec_to_line, write_jsonl
from shunter.workload.length_dist import LENGTH_SAMPLERS, LengthDistribution
from shunter.workload.loaders import (
    TRACE_FORMATS,
    TraceLoader,
    detect_format,
    iter_workload,
    load_workload,
    retime,
)
from shunter.workload.parse import ZERO_TOKEN_POLICIES, LoadOptions, LoadReport, ZeroLengthWarning

__all__ = [
    "ARRIVAL_PROCESSES",
    "LENGTH_SAMPLERS",
    "MOONCAKE_HASH_BLOCK_SIZE",
    "TRACE_FORMATS",
    "ZERO_TOKEN_POLICIES",
    "LengthDistribution",
    "LoadOptions",
    "LoadReport",
    "RequestClass",
    "SharedPrefix",
    "SyntheticWorkload",
    "TraceLoader",
    "ZeroLengthWarning",
    "arrival_times",
    "detect_format",
    "generate",
    "iter_arrival_times",
    "iter_jsonl",
    "iter_workload",
    "load_workload",
    "merge_workloads",
    "retime",
    "spec_to_line",
    "write_jsonl",
]
