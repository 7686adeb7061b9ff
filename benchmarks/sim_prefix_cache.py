"""What the scheduler's options cost the simulator: CPU time with and without prefix caching and
chunked prefill, on the same requests, in the same run.

With the prefix cache on (the default) every prompt block is allocated, published and freed
through the cache's LRU queue; blocks only their own request can ever match (private blocks:
no token ids, past the request's hash ids, i.e. every block of a ShareGPT request here) are
hashed and published only if their request is preempted, swapped or moved
(`Request.publish_limit`). The anchor is the cheapest configuration, both options off; each row
is its CPU time over the anchor's.

Workload: ShareGPT-8k lengths (../shared/traces, prompts average ~2,300 tokens), Poisson
arrivals at `--rate`, Llama-3.1-8B on A100 (the simulator's defaults), `--replicas` replicas
with round-robin routing, one process. It runs the build this install runs
(`shunter build` makes the compiled one; SHUNTER_PURE_PYTHON=1 ignores it).

Run: python benchmarks/sim_prefix_cache.py [--num-requests N] [--rate R] [--replicas K]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from shunter.build import describe_build
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate
from shunter.workload.loaders import load_workload, retime

TRACE = (Path(__file__).resolve().parents[1].parent / "shared" / "traces"
         / "lengths_sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
CONFIGS = [  # (label, chunked prefill, prefix caching); the first is the anchor
    ("prefill-first, no prefix cache", False, False),
    ("chunked prefill, no prefix cache", True, False),
    ("prefill-first, prefix cache", False, True),
    ("chunked prefill, prefix cache (defaults)", True, True),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-requests", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second")
    parser.add_argument("--replicas", type=int, default=4)
    args = parser.parse_args(argv)
    if args.num_requests < 1 or args.rate <= 0 or args.replicas < 1:
        parser.error("--num-requests, --rate and --replicas must be positive")
    if not TRACE.exists():
        print(f"trace not found: {TRACE} (the project's shared traces)", file=sys.stderr)
        return 2
    specs = list(retime(load_workload(TRACE, num_requests=args.num_requests), args.rate, seed=0))
    print(f"{args.num_requests} ShareGPT-8k requests at {args.rate} req/s on {args.replicas} "
          f"replicas, {describe_build()}")
    rows = []
    for label, chunked, caching in CONFIGS:
        config = SimConfig(num_replicas=args.replicas, router="round_robin",
                           scheduler={"enable_chunked_prefill": chunked,
                                      "enable_prefix_caching": caching})
        start = time.process_time()
        simulate(config, specs)
        rows.append((label, time.process_time() - start))
        print(f"  {label}: {rows[-1][1]:.2f} CPU-s", file=sys.stderr, flush=True)
    anchor = rows[0][1]
    width = max(len(label) for label, _ in rows)
    print(f"{'configuration':<{width}}  CPU s  req/CPU-s  / anchor")
    for label, cpu_s in rows:
        print(f"{label:<{width}}  {cpu_s:5.2f}  {args.num_requests / cpu_s:9,.0f}  "
              f"{cpu_s / anchor:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
