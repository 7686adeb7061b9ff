"""Time summarize() on synthetic records (not a test; run by hand, it needs ~16 GB at 1M x 200).

    .venv/bin/python tests/metrics/bench_summarize.py --requests 1000000 --tokens 200 \\
        --tenants 8 --step-s 0.01

`--step-s` rounds token times up to a grid, as a simulator does (every token of a step shares
one time); 0 keeps every token time distinct, the worst case for the service-gap sweep.
Prints wall and CPU seconds per phase (the machine is shared: CPU time is the steadier one).
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

import numpy as np

from shunter.core.types import FinishReason
from shunter.metrics import RequestRecord, summarize
from shunter.metrics.columns import to_columns
from shunter.metrics.service_gap import max_service_gap


def make_records(num_requests: int, num_tokens: int, num_tenants: int, step_s: float,
                 seed: int) -> list[RequestRecord]:
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / 300, num_requests))
    start = arrival + rng.exponential(0.5, num_requests)
    tokens = start[:, None] + np.cumsum(rng.exponential(0.03, (num_requests, num_tokens)), axis=1)
    if step_s > 0:
        tokens = np.ceil(tokens / step_s) * step_s
    tenant = rng.integers(0, num_tenants, num_requests)
    token_lists = tokens.tolist()
    del tokens
    names = [f"tenant{i}" for i in range(num_tenants)]
    return [RequestRecord(request_id=str(i), arrival_s=float(arrival[i]), num_prompt_tokens=500,
                          tenant=names[tenant[i]], first_scheduled_s=float(start[i]),
                          token_times_s=token_lists[i], finish_s=token_lists[i][-1],
                          finish_reason=FinishReason.STOP, num_cached_tokens=100)
            for i in range(num_requests)]


def timed(label: str, fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    print(f"{label:>16}: wall {time.perf_counter() - wall:6.1f} s, "
          f"cpu {time.process_time() - cpu:6.1f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--tenants", type=int, default=8)
    parser.add_argument("--step-s", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    records = timed("build records", make_records, args.requests, args.tokens, args.tenants,
                    args.step_s, args.seed)
    gc.collect()
    gc.freeze()  # records live all run: keep the cyclic collector from rescanning them
    cols = timed("to_columns", to_columns, records)
    timed("max_service_gap", max_service_gap, cols)
    del cols
    summary = timed("summarize", summarize, records, ttft_slo_s=1.0, tpot_slo_s=0.05)
    print(f"itl_s.p99 {summary.itl_s.p99:.4f}, jain {summary.fairness.jain_index:.4f}, "
          f"gap {summary.fairness.max_service_gap}, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")


if __name__ == "__main__":
    main()
